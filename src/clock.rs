//! Wall-clock time, injected.
//!
//! pleg compares the runtime's wall-clock stamps (a stream event's
//! `created_at`) with its own (when a listing started), and stamps every
//! event it publishes. It reads that time through a [`Clock`] given in its
//! configuration, never inline, so tests of the stale-event rules decide
//! what "now" is. Durations and deadlines use tokio's monotonic clock
//! instead (paused in tests).

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The system's clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The system's clock, shared.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to, for tests.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use pleg::clock::{Clock, ManualClock};
///
/// let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(clock.now(), SystemTime::UNIX_EPOCH + Duration::from_secs(5));
/// ```
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug)]
pub struct ManualClock {
    now: parking_lot::Mutex<SystemTime>,
    /// How far each reading moves the clock on (zero: it stands still).
    step: std::time::Duration,
}

#[cfg(any(test, feature = "test-util"))]
impl ManualClock {
    /// A clock standing at `now`.
    pub fn new(now: SystemTime) -> Arc<Self> {
        Self::ticking(now, std::time::Duration::ZERO)
    }

    /// A clock standing at `now` that moves on by `step` after every
    /// reading, like a real clock read at intervals: two readings never
    /// give the same time.
    pub fn ticking(now: SystemTime, step: std::time::Duration) -> Arc<Self> {
        Arc::new(ManualClock {
            now: parking_lot::Mutex::new(now),
            step,
        })
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: std::time::Duration) {
        let mut now = self.now.lock();
        *now += by;
    }

    /// Sets the clock.
    pub fn set(&self, to: SystemTime) {
        *self.now.lock() = to;
    }
}

#[cfg(any(test, feature = "test-util"))]
impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        let mut now = self.now.lock();
        let read = *now;
        *now += self.step;
        read
    }
}
