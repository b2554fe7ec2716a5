//! The event-stream driver: the runtime's `GetContainerEvents` stream, with
//! relisting kept as a safety net.
//!
//! The stream and the relist feed one core (the single writer), so each
//! transition reaches subscribers exactly once, from whichever source saw
//! it first, and stale or out-of-order events are dropped and counted
//! ([`StaleReason`]).
//!
//! # States
//! One state machine (`state::State`, one `step`) decides; a thin driver
//! (`driver`) opens and reads the stream, waits, and carries out what
//! `step` asks for. Its status is published on a `tokio::sync::watch`
//! channel ([`crate::Pleg::watch_stream_status`]), so observers await it:
//! - `Connecting`: opening the stream. Success goes to `Streaming`, after
//!   switching to the generic relist period and relisting at once (CRI has
//!   no resume token). `Unimplemented` (containerd 1.6) goes to `Fallback`
//!   at once, with one log line. Another error goes to `Backoff`, or to
//!   `Fallback` after `max_stream_failures` failures in a row.
//! - `Streaming`: events are applied as they come, and the cache's global
//!   time advances every `cache_tick` so that `get_newer_than` waiters are
//!   never stranded. The first event on a new stream brings one more relist
//!   and the evented period. An event that shows lost predecessors brings a
//!   relist, at most once a second. An error or the end of the stream goes
//!   to `Backoff` (or `Fallback`); a stream that lived `stable_after` first
//!   resets the count.
//! - `Backoff`: waits a jittered, growing delay, then `Connecting`.
//! - `Fallback`: relists at the generic period and probes the stream every
//!   `probe_interval`. A probe that works re-promotes the generator to
//!   evented mode.
//!
//! # Relisting
//! While streaming, relists run every 300 s (threshold 10 min), as the
//! kubelet's evented PLEG does; otherwise at the generic period (1 s,
//! threshold 3 min).

/// How long a stream that lost events (to another consumer, or a full
/// buffer) must lose none before relisting goes back from the generic to
/// the evented period.
pub(crate) const LOSSY_FOR: std::time::Duration = std::time::Duration::from_secs(60);

pub(crate) mod driver;
pub(crate) mod probe;
pub(crate) mod state;

use tokio::time::Instant;

use crate::metrics::HistogramSnapshot;
use crate::naming::named_enum;

named_enum! {
    /// Which generator is in charge.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum Mode {
        /// The event stream, with slow relisting as a safety net.
        Evented = "evented",
        /// Relisting at the generic period (the stream is unavailable, or
        /// not used).
        Generic = "generic",
    }
}

named_enum! {
    /// Where the stream's state machine stands.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum StreamState {
        /// Not started, or stopped.
        Stopped = "stopped",
        /// Opening the stream.
        Connecting = "connecting",
        /// Receiving events.
        Streaming = "streaming",
        /// Waiting before reconnecting.
        Backoff = "backoff",
        /// Relisting at the generic period, probing the stream now and then.
        Fallback = "fallback",
    }
}

named_enum! {
    /// Why an event was dropped as stale.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum StaleReason {
        /// Older than the last listing, which already reflects it.
        BeforeListing = "before_listing",
        /// Older than the pod's cache entry.
        OlderThanCache = "older_than_cache",
        /// CREATED for a container that already started or finished.
        CreatedAfterStart = "created_after_start",
        /// STARTED for a container that already finished.
        StartedAfterFinish = "started_after_finish",
        /// About an ID already reported removed.
        AlreadyRemoved = "already_removed",
    }
}

/// The stream's situation, for health, operators and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
    /// Stream events handled so far, each with the relists it brought.
    pub events_handled: u64,
}

impl StreamStatus {
    /// Before the stream starts.
    pub(crate) fn stopped(mode: Mode, since: Instant) -> Self {
        StreamStatus {
            mode,
            state: StreamState::Stopped,
            failures: 0,
            last_error: None,
            since,
            events_handled: 0,
        }
    }
}

/// Counters of the stream.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct StreamStats {
    /// Streams opened.
    pub connection_successes: u64,
    /// Attempts to open a stream that failed, and streams that broke.
    pub connection_errors: u64,
    /// Events received.
    pub events_received: u64,
    /// Events applied (whether or not they published anything).
    pub events_applied: u64,
    /// Events dropped as stale, by reason (in the order of
    /// [`StaleReason::ALL`]).
    pub stale_dropped: Vec<(StaleReason, u64)>,
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
        self.stale_dropped.iter().map(|(_, n)| n).sum()
    }

    /// Stale events dropped for one reason.
    pub fn stale(&self, reason: StaleReason) -> u64 {
        self.stale_dropped
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}
