//! The relisting driver: when to relist, and one relist.
//!
//! A relist lists every pod (one runtime call) and hands the listing to the
//! core ([`crate::core`]). If the listing fails, nothing else happens: no
//! events, no cache change, and health keeps its last success time.
//! Relists are serialised by the core's lock: the periodic loop,
//! [`crate::Pleg::relist`], per-pod requests and the stream driver's
//! catch-up relists never run two at once.
//!
//! # When
//! [`run`] relists at once and then every period, measured from the end of
//! one relist to the start of the next. A changed period wakes the wait
//! early, and so does a per-pod request ([`Control::request`]), unless the
//! runtime just failed to list: a request must not turn a runtime outage
//! into a tight retry loop.
//!
//! # Limits of relisting
//! A container created and removed between two relists is never seen; the
//! event stream closes that gap.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::core::{Asked, RelistSummary};
use crate::health::{self, InvalidRelistDuration, RelistDuration};
use crate::pleg::Shared;
use crate::runtime;

/// A pod asked for, and the number of the latest request, so that a request
/// made while a relist runs is not cleared by that relist.
#[derive(Clone, Copy, Debug)]
struct Request {
    number: u64,
    sync: bool,
}

/// What the relist loop is told while it waits between relists.
#[derive(Debug)]
pub(crate) struct Control {
    duration: Mutex<RelistDuration>,
    requested: Mutex<HashMap<crate::PodUid, Request>>,
    requests: AtomicU64,
    wake: tokio::sync::Notify,
}

impl Control {
    pub(crate) fn new(duration: RelistDuration) -> Self {
        Control {
            duration: Mutex::new(duration),
            requested: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// The current period and threshold.
    pub(crate) fn duration(&self) -> RelistDuration {
        *self.duration.lock()
    }

    /// Changes the period and threshold; a waiting loop picks them up at
    /// once.
    pub(crate) fn update(&self, duration: RelistDuration) -> Result<(), InvalidRelistDuration> {
        duration.validate()?;
        *self.duration.lock() = duration;
        self.wake.notify_one();
        Ok(())
    }

    /// Asks for a pod to be inspected at a relist that starts now; `sync`
    /// owes it a `PodSync` too.
    pub(crate) fn request(&self, uid: &crate::PodUid, sync: bool) {
        let number = self.requests.fetch_add(1, Ordering::Relaxed);
        let mut requested = self.requested.lock();
        let entry = requested.entry(uid.clone()).or_insert(Request {
            number,
            sync: false,
        });
        entry.number = number;
        entry.sync |= sync;
        drop(requested);
        self.wake.notify_one();
    }

    fn pending(&self) -> Vec<(crate::PodUid, Request)> {
        self.requested
            .lock()
            .iter()
            .map(|(uid, request)| (uid.clone(), *request))
            .collect()
    }

    /// Clears the requests a relist served, unless asked again meanwhile.
    fn served(&self, served: &[(crate::PodUid, Request)]) {
        let mut pending = self.requested.lock();
        for (uid, request) in served {
            if pending.get(uid).is_some_and(|p| p.number == request.number) {
                pending.remove(uid);
            }
        }
    }
}

/// When the last relists ran and how the last one went, for health.
#[derive(Debug, Default)]
pub(crate) struct RelistHealth {
    /// Start of the last relist whose listing succeeded.
    pub(crate) last_success: Option<Instant>,
    /// Its wall-clock start.
    pub(crate) last_seen: Option<std::time::SystemTime>,
    /// Why the last relist failed, while it is the latest.
    pub(crate) last_error: Option<String>,
    /// Start of the previous relist, for the interval histogram.
    previous_start: Option<Instant>,
    /// Duration of the last successful relist.
    pub(crate) last_duration: std::time::Duration,
    /// Start of the last liveness probe the runtime answered (evented
    /// mode, between the safety-net relists).
    pub(crate) last_probe_ok: Option<Instant>,
    /// Whether the last relist failed: the loop then retries within a
    /// second, not a whole period later.
    pub(crate) failing: bool,
}

/// How soon a failed relist is retried, at most (never later than the
/// period).
const RETRY_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(1);

/// Relists now and waits for it to finish.
pub(crate) async fn relist(shared: &Shared) -> runtime::Result<RelistSummary> {
    let mut core = shared.core.lock().await;
    let started = Instant::now();
    let listed_at = shared.clock.now();
    let metrics = &shared.metrics;
    if let Some(previous) = shared.health.lock().previous_start.replace(started) {
        metrics.relist_interval.observe(started - previous);
    }
    let listing = core.runtime().list_pods().await;
    let listing = match listing {
        Ok(listing) => listing,
        Err(e) => {
            {
                let mut health = shared.health.lock();
                health.last_error = Some(e.to_string());
                health.failing = true;
            }
            shared.control.wake.notify_one();
            metrics.relist_failures.inc();
            tracing::error!(error = ?e.to_string(), "relist: unable to list pods; keeping previous records");
            return Err(e);
        }
    };
    {
        let mut health = shared.health.lock();
        health.last_success = Some(started);
        health.last_seen = Some(listed_at);
        health.last_error = None;
        if std::mem::replace(&mut health.failing, false) {
            shared.runtime_back.notify_one();
        }
    }
    if let Ok(since_epoch) = listed_at.duration_since(std::time::UNIX_EPOCH) {
        metrics.last_seen.set(since_epoch.as_secs_f64());
    }
    let pending = shared.control.pending();
    let asked: Vec<Asked> = pending
        .iter()
        .map(|(uid, request)| Asked {
            uid: uid.clone(),
            sync: request.sync,
        })
        .collect();
    let summary = core
        .apply_listing(listing, started, listed_at, &asked)
        .await;
    shared.control.served(&pending);
    metrics.relists.inc();
    let took = started.elapsed();
    metrics.relist_duration.observe(took);
    shared.health.lock().last_duration = took;
    drop(core);
    if let Some(after) = &shared.after_relist {
        after.call(&summary);
    }
    Ok(summary)
}

/// Relists periodically until `cancel`.
pub(crate) async fn run(shared: std::sync::Arc<Shared>, cancel: CancellationToken) {
    let control = &shared.control;
    loop {
        let listed = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            outcome = relist(&shared) => outcome.is_ok(),
        };
        let finished = Instant::now();
        loop {
            let mut woken = pin!(control.wake.notified());
            woken.as_mut().enable();
            if listed && !control.requested.lock().is_empty() {
                break;
            }
            // A failed relist (this loop's, or a catch-up relist of the
            // stream driver's) is retried soon, not a period later.
            let period = control.duration().relist_period;
            let deadline = if shared.health.lock().failing {
                finished + period.min(RETRY_AFTER_FAILURE)
            } else {
                finished + period
            };
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = tokio::time::sleep_until(deadline) => break,
                () = &mut woken => {}
            }
        }
    }
}

/// Warns when a running generator's threshold does not exceed its period.
pub(crate) fn warn_if_threshold_is_short(relist: &RelistDuration) {
    if !relist.threshold_covers_period() {
        tracing::warn!(
            period = %crate::duration::GoDuration(relist.relist_period),
            threshold = %crate::duration::GoDuration(relist.relist_threshold),
            "relist threshold does not exceed the relist period; the generator will report unhealthy between relists"
        );
    }
}

/// Health from the last successful relist, or the last liveness probe
/// the runtime answered (evented mode, between the safety-net relists).
pub(crate) fn healthy(shared: &Shared) -> Result<(), health::Unhealthy> {
    let health = shared.health.lock();
    let last_active = health.last_success.max(health.last_probe_ok);
    drop(health);
    health::check(
        last_active,
        Instant::now(),
        shared.control.duration().relist_threshold,
    )
}
