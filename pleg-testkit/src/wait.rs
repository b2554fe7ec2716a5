//! Waiting for a condition by polling it, with a bound: the one polling loop
//! pleg's tests share.
//!
//! Prefer waiting on the event itself (a subscription, a `watch` channel);
//! poll only what offers nothing to wait on: a subprocess's HTTP port, the
//! counters of a generator, a file. Every wait names what it waits for and
//! fails the test naming it when the bound passes.
//!
//! # Time
//! The bound and the pause between polls run on tokio time. Under paused
//! time (`#[tokio::test(start_paused = true)]`) each pause lets the clock
//! jump ahead, so a condition driven by tokio time (relist periods,
//! thresholds, backoff) is polled at virtual-time intervals and a wait that
//! fails does so at once, without wall-clock waiting. A condition that only
//! real I/O can make true needs real time (the default): under paused time
//! the bound would pass while the I/O is still in flight.

use std::future::Future;
use std::time::Duration;

/// The pause between two polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Polls `check` until it gives a value, and returns it.
///
/// # Panics
/// When `timeout` passes first: "timed out after … waiting for `what`".
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use std::time::Duration;
/// use pleg_testkit::wait::eventually;
///
/// let start = tokio::time::Instant::now();
/// let elapsed = eventually("a second to pass", Duration::from_secs(5), || {
///     Some(start.elapsed()).filter(|e| *e >= Duration::from_secs(1))
/// })
/// .await;
/// assert!(elapsed >= Duration::from_secs(1));
/// # }
/// ```
pub async fn eventually<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    poll(timeout, check)
        .await
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Like [`eventually`], for a check that has to await something (an HTTP
/// request, a runtime call). A probe still running when `timeout` passes is
/// abandoned.
///
/// # Panics
/// When `timeout` passes first, naming `what`.
pub async fn eventually_async<T, F>(what: &str, timeout: Duration, probe: impl FnMut() -> F) -> T
where
    F: Future<Output = Option<T>>,
{
    poll_async(timeout, probe)
        .await
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Polls `check` until it gives a value (`Some`) or `timeout` passes
/// (`None`): for a test that goes on either way.
pub async fn poll<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    poll_async(timeout, || std::future::ready(check())).await
}

/// Like [`poll`], for a check that has to await something.
pub async fn poll_async<T, F>(timeout: Duration, mut probe: impl FnMut() -> F) -> Option<T>
where
    F: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, probe()).await {
            Ok(Some(value)) => return Some(value),
            Ok(None) => {}
            Err(_) => return None,
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, SystemTime};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn under_paused_time_a_condition_driven_by_tokio_time_is_reached() {
        let done = Arc::new(AtomicBool::new(false));
        tokio::spawn({
            let done = done.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(90)).await;
                done.store(true, Ordering::SeqCst);
            }
        });
        let wall = SystemTime::now();
        eventually("the timer", Duration::from_secs(120), || {
            done.load(Ordering::SeqCst).then_some(())
        })
        .await;
        let waited = wall.elapsed().unwrap_or_default();
        assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_fails_gives_up_after_its_bound_in_tokio_time() {
        let start = tokio::time::Instant::now();
        assert_eq!(poll(Duration::from_secs(30), || None::<()>).await, None);
        assert!(start.elapsed() >= Duration::from_secs(30));
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 50ms waiting for the impossible")]
    async fn a_failed_wait_names_what_it_waited_for() {
        eventually("the impossible", Duration::from_millis(50), || None::<()>).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_probe_is_abandoned_at_the_bound() {
        let got = poll_async(Duration::from_secs(1), || {
            std::future::pending::<Option<()>>()
        })
        .await;
        assert_eq!(got, None);
    }

    #[tokio::test]
    async fn an_async_probe_is_polled_until_it_answers() {
        let mut calls = 0;
        let got = eventually_async("the third call", Duration::from_secs(5), || {
            calls += 1;
            let n = calls;
            async move { (n == 3).then_some(n) }
        })
        .await;
        assert_eq!(got, 3);
    }
}
