//! The seam between the generator and a container runtime.
//!
//! [`Runtime`] is what the generator needs from a runtime: a listing of every
//! pod with its sandboxes and containers in all states, and the status of one
//! pod. Implementations convert the runtime's data into our model at the edge;
//! a value they do not understand becomes `Unknown` and is counted in
//! [`RuntimeStats`], never a panic.
//!
//! Calls are async and cancellable (dropping the future abandons the call).
//! The generator bounds every call with its runtime request timeout through
//! [`bounded`].
//!
//! [`fake::FakeRuntime`] is a scripted, deterministic runtime for tests and
//! benchmarks.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::health::go_duration;
use crate::model::{ContainerState, Listing, Pod, PodStatus};

pub mod cri;
pub mod fake;
pub mod fake_cri;

/// A boxed, sendable future, so that [`Runtime`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Result of a runtime call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A runtime call that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The call took longer than the runtime request timeout.
    #[error("runtime call {call} timed out after {}", go_duration(*after))]
    Timeout {
        /// The call, for example `ListPods`.
        call: &'static str,
        /// The timeout that expired.
        after: Duration,
    },
    /// The runtime answered with an error.
    #[error("runtime call {call} failed: {message}")]
    Failed {
        /// The call, for example `PodStatus`.
        call: &'static str,
        /// What the runtime said.
        message: String,
    },
}

/// What the generator needs from a container runtime.
pub trait Runtime: Send + Sync + 'static {
    /// Every pod with its sandboxes and containers, in all states.
    fn list_pods(&self) -> BoxFuture<'_, Result<Listing>>;

    /// The status of one pod that the last listing returned.
    fn pod_status<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Result<PodStatus>>;

    /// Counters kept by the runtime adapter.
    fn stats(&self) -> &RuntimeStats;
}

/// Counters kept by a runtime adapter: calls by method, and values received
/// from the runtime that we did not recognise.
#[derive(Debug, Default)]
pub struct RuntimeStats {
    calls: Mutex<BTreeMap<&'static str, u64>>,
    outcomes: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    unknown_values: AtomicU64,
    skipped_records: AtomicU64,
}

impl RuntimeStats {
    fn unknown(&self, what: &'static str, raw: i32) -> ContainerState {
        // Warn on the first unknown value only; the counter tells the rest.
        if self.unknown_values.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(
                value = raw,
                "runtime sent an unknown {what} state; treating it as unknown (counted from now on)"
            );
        } else {
            tracing::debug!(value = raw, "runtime sent an unknown {what} state");
        }
        ContainerState::Unknown
    }
}

impl RuntimeStats {
    /// Counts one call of `method`.
    pub fn count_call(&self, method: &'static str) {
        *self.calls.lock().entry(method).or_default() += 1;
    }

    /// Counts how a call of `method` ended: a gRPC code name such as `OK` or
    /// `NotFound`, or `Timeout`.
    pub fn count_outcome(&self, method: &'static str, code: &'static str) {
        *self.outcomes.lock().entry((method, code)).or_default() += 1;
    }

    /// Calls that ended so far, by method and outcome.
    pub fn outcomes(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        self.outcomes.lock().clone()
    }

    /// Calls made so far, by method.
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.calls.lock().clone()
    }

    /// Calls of one method made so far.
    pub fn calls_of(&self, method: &str) -> u64 {
        self.calls.lock().get(method).copied().unwrap_or(0)
    }

    /// Values outside the enums we know, received so far.
    pub fn unknown_values(&self) -> u64 {
        self.unknown_values.load(Ordering::Relaxed)
    }

    /// Counts a record the runtime sent that cannot be used (an empty ID, a
    /// sandbox without metadata, a container whose pod is unknown) and was
    /// left out. The first one is logged as a warning, the rest at debug level.
    pub fn skip_record(&self, what: &str, why: &str) {
        if self.skipped_records.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(
                "runtime sent a {what} that cannot be used ({why}); skipped it (counted from now on)"
            );
        } else {
            tracing::debug!("runtime sent a {what} that cannot be used ({why}); skipped it");
        }
    }

    /// Records the runtime sent that could not be used and were left out.
    pub fn skipped_records(&self) -> u64 {
        self.skipped_records.load(Ordering::Relaxed)
    }

    /// Decodes a CRI container state number; a value outside the enum becomes
    /// `Unknown` and is counted.
    pub fn decode_container_state(&self, raw: i32) -> ContainerState {
        ContainerState::from_cri_container(raw).unwrap_or_else(|| self.unknown("container", raw))
    }

    /// Decodes a CRI sandbox state number; a value outside the enum becomes
    /// `Unknown` and is counted.
    pub fn decode_sandbox_state(&self, raw: i32) -> ContainerState {
        ContainerState::from_cri_sandbox(raw).unwrap_or_else(|| self.unknown("sandbox", raw))
    }
}

/// Runs a runtime call with a deadline.
pub async fn bounded<T>(
    call: &'static str,
    timeout: Duration,
    request: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, request).await {
        Ok(answer) => answer,
        Err(_) => Err(Error::Timeout {
            call,
            after: timeout,
        }),
    }
}
