//! The liveness probe: while the event stream is in charge, relists are
//! minutes apart, so a runtime that stops answering (SIGSTOP, a deadlock)
//! would go unnoticed until the next one. The probe asks the runtime a
//! cheap question ([`Runtime::probe`](crate::runtime::Runtime::probe), CRI
//! `Version`) every [`interval`], unless a relist succeeded more recently,
//! so health is judged in evented mode against the same threshold as in
//! generic mode.
//!
//! # Cost
//! One `Version` call per interval: a quarter of the relist threshold,
//! between 1 s and 5 s, so 12 calls a minute with the default threshold
//! (3 min) and 15 to 60 a minute for thresholds under 20 s. Nothing is
//! probed while relists come more often than that (generic mode, fallback,
//! the minutes after a reconnection).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::pleg::Shared;

/// Longest a probe may take before it counts as unanswered.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the runtime is probed for a relist threshold: a quarter of it,
/// between 1 s and 5 s, so that a runtime that stops answering fails health
/// within the threshold plus 5 s.
pub(crate) fn interval(threshold: Duration) -> Duration {
    (threshold / 4).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// Probes until `cancel`.
pub(crate) async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let every = interval(shared.control.duration().relist_threshold);
        let last_relist = shared.health.lock().last_success;
        let due = last_relist.map_or_else(Instant::now, |at| at + every);
        let due = due.max(Instant::now());
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = tokio::time::sleep_until(due) => {}
        }
        if shared
            .health
            .lock()
            .last_success
            .is_some_and(|at| at.elapsed() < every)
        {
            continue;
        }
        let started = Instant::now();
        let answer = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            answer = shared.runtime.probe_within(PROBE_TIMEOUT) => answer,
        };
        match answer {
            Ok(()) => shared.health.lock().last_probe_ok = Some(started),
            Err(e) => {
                shared.metrics.stream.probe_failures.inc();
                tracing::debug!(error = ?e.to_string(), "runtime liveness probe failed");
            }
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = tokio::time::sleep_until(started + every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_a_quarter_of_the_threshold_within_1_to_5_seconds() {
        assert_eq!(interval(Duration::from_secs(180)), Duration::from_secs(5));
        assert_eq!(
            interval(Duration::from_secs(10)),
            Duration::from_millis(2500)
        );
        assert_eq!(interval(Duration::from_secs(2)), Duration::from_secs(1));
    }
}
