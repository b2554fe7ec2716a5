//! Health of the generator, judged like the kubelet's: a generator is healthy
//! while its last relist whose listing succeeded started less than
//! `relist_threshold` ago.
//!
//! Reasons read like the kubelet's so that operators recognise them:
//! "pleg has yet to be successful", "pleg was last seen active 3m5s ago;
//! threshold is 3m0s".

use std::time::Duration;

use tokio::time::Instant;

use crate::duration::GoDuration;

/// How often to relist, and how long without a successful relist makes the
/// generator unhealthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelistDuration {
    /// Pause between the end of one relist and the start of the next.
    pub relist_period: Duration,
    /// Maximum age of the last successful relist before health fails. Must
    /// exceed the period plus the time a relist takes, with room to spare.
    pub relist_threshold: Duration,
}

impl RelistDuration {
    /// A period and a threshold.
    pub const fn new(relist_period: Duration, relist_threshold: Duration) -> Self {
        RelistDuration {
            relist_period,
            relist_threshold,
        }
    }

    /// The kubelet's generic defaults: relist every second, unhealthy after
    /// three minutes.
    pub const GENERIC: RelistDuration = RelistDuration {
        relist_period: Duration::from_secs(1),
        relist_threshold: Duration::from_mins(3),
    };

    /// The kubelet's evented defaults, for relisting as a safety net while the
    /// event stream works: every five minutes, unhealthy after ten.
    pub const EVENTED: RelistDuration = RelistDuration {
        relist_period: Duration::from_mins(5),
        relist_threshold: Duration::from_mins(10),
    };
}

impl RelistDuration {
    /// Checks that the period and the threshold are positive.
    ///
    /// A threshold at or below the period is allowed, since a generator that
    /// is relisted by hand has no use for the period, but a running generator
    /// configured so reports itself unhealthy between relists;
    /// [`threshold_covers_period`](Self::threshold_covers_period) tells.
    ///
    /// # Errors
    /// A zero period or threshold, or one longer than [`MAX_DURATION`]
    /// (which no timer could wait out, and which would overflow the clock).
    pub fn validate(&self) -> Result<(), InvalidRelistDuration> {
        if self.relist_period.is_zero() {
            return Err(InvalidRelistDuration::ZeroPeriod);
        }
        if self.relist_threshold.is_zero() {
            return Err(InvalidRelistDuration::ZeroThreshold);
        }
        for (what, value) in [
            ("relist period", self.relist_period),
            ("relist threshold", self.relist_threshold),
        ] {
            if value > MAX_DURATION {
                return Err(InvalidRelistDuration::TooLong { what, value });
            }
        }
        Ok(())
    }

    /// Whether the threshold exceeds the period, as it must for a running
    /// generator to stay healthy.
    pub fn threshold_covers_period(&self) -> bool {
        self.relist_threshold > self.relist_period
    }
}

/// A relist period and threshold that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRelistDuration {
    /// A zero period would relist back to back.
    #[error("relist period must be greater than zero")]
    ZeroPeriod,
    /// A zero threshold would report every generator unhealthy.
    #[error("relist threshold must be greater than zero")]
    ZeroThreshold,
    /// Longer than any timer should wait (and than the clock can add).
    #[error("{what} {} is longer than the longest allowed, {}", GoDuration(*value), GoDuration(MAX_DURATION))]
    TooLong {
        /// Which one.
        what: &'static str,
        /// The value given.
        value: Duration,
    },
}

/// The longest period, threshold or interval a generator accepts: a week.
/// Anything longer is a mistake, and far longer ones would overflow the
/// clock when added to it.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for RelistDuration {
    fn default() -> Self {
        RelistDuration::GENERIC
    }
}

/// Why the generator is not healthy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unhealthy {
    /// No relist has succeeded yet.
    #[error("pleg has yet to be successful")]
    NeverSucceeded,
    /// The last successful relist started too long ago.
    #[error("pleg was last seen active {} ago; threshold is {}", GoDuration(*elapsed), GoDuration(*threshold))]
    Stale {
        /// Time since the last successful relist started.
        elapsed: Duration,
        /// The configured threshold.
        threshold: Duration,
    },
}

/// Judges health from the start time of the last successful relist.
///
/// # Errors
/// [`Unhealthy`] when no relist has succeeded yet, or the last one started more than `threshold` before `now`.
pub fn check(
    last_success: Option<Instant>,
    now: Instant,
    threshold: Duration,
) -> Result<(), Unhealthy> {
    let Some(last) = last_success else {
        return Err(Unhealthy::NeverSucceeded);
    };
    let elapsed = now.saturating_duration_since(last);
    if elapsed > threshold {
        return Err(Unhealthy::Stale { elapsed, threshold });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relist_durations_that_cannot_work_are_refused_with_the_values() {
        let zero = RelistDuration {
            relist_period: Duration::ZERO,
            relist_threshold: Duration::from_secs(1),
        };
        assert_eq!(zero.validate(), Err(InvalidRelistDuration::ZeroPeriod));
        let no_threshold = RelistDuration {
            relist_period: Duration::from_secs(5),
            relist_threshold: Duration::ZERO,
        };
        assert_eq!(
            no_threshold.validate().map_err(|e| e.to_string()),
            Err("relist threshold must be greater than zero".to_string())
        );
        let inverted = RelistDuration {
            relist_period: Duration::from_secs(3600),
            relist_threshold: Duration::from_secs(180),
        };
        assert_eq!(inverted.validate(), Ok(()));
        assert!(!inverted.threshold_covers_period());
        assert_eq!(RelistDuration::default().validate(), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn reasons_read_like_the_kubelets() {
        let threshold = Duration::from_secs(180);
        let now = Instant::now();
        assert_eq!(
            check(None, now, threshold).map_err(|e| e.to_string()),
            Err("pleg has yet to be successful".to_string())
        );
        assert_eq!(
            check(Some(now), now + Duration::from_secs(180), threshold),
            Ok(())
        );
        assert_eq!(
            check(Some(now), now + Duration::from_secs(185), threshold).map_err(|e| e.to_string()),
            Err("pleg was last seen active 3m5s ago; threshold is 3m0s".to_string())
        );
    }
}
