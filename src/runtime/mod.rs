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
//! `fake::FakeRuntime` is a scripted, deterministic runtime for tests and
//! benchmarks, behind the `test-util` feature (pleg-testkit turns it on).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use crate::health::go_duration;
use crate::model::{Container, ContainerId, ContainerState, Listing, Pod, PodMeta, PodStatus};

pub mod cri;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;

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
    /// The runtime does not implement the call (containerd 1.6 and
    /// `GetContainerEvents`, for example).
    #[error("runtime call {call} is not implemented by the runtime: {message}")]
    Unimplemented {
        /// The call.
        call: &'static str,
        /// What the runtime said.
        message: String,
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

    /// Opens the runtime's container event stream (CRI `GetContainerEvents`).
    /// A runtime without one answers [`Error::Unimplemented`], which is the
    /// default.
    fn container_events(&self) -> BoxFuture<'_, Result<EventStream>> {
        Box::pin(async {
            Err(Error::Unimplemented {
                call: "GetContainerEvents",
                message: "this runtime has no event stream".into(),
            })
        })
    }
}

/// A stream of container events; it ends (or yields an error) when the
/// connection breaks. CRI has no resume token: what happens while no stream
/// is open is found by relisting.
pub type EventStream = Pin<Box<dyn futures_core::Stream<Item = Result<ContainerEvent>> + Send>>;

/// What happened to a container or sandbox, as an event stream reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContainerEventKind {
    /// Created, not started.
    Created,
    /// Started (for a sandbox: ready).
    Started,
    /// Stopped: the process exited or was killed (for a sandbox: not ready).
    Stopped,
    /// Removed from the runtime.
    Deleted,
}

impl ContainerEventKind {
    /// Decodes a CRI `ContainerEventType` number; `None` outside the enum.
    pub fn from_cri(value: i32) -> Option<Self> {
        match value {
            0 => Some(ContainerEventKind::Created),
            1 => Some(ContainerEventKind::Started),
            2 => Some(ContainerEventKind::Stopped),
            3 => Some(ContainerEventKind::Deleted),
            _ => None,
        }
    }

    /// Lower-case name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerEventKind::Created => "created",
            ContainerEventKind::Started => "started",
            ContainerEventKind::Stopped => "stopped",
            ContainerEventKind::Deleted => "deleted",
        }
    }
}

/// A sandbox as an event describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxSnapshot {
    /// The pod, when the runtime sent the sandbox's metadata (containerd 1.7
    /// sends none for a sandbox's own `DELETED` event).
    pub pod: Option<PodMeta>,
    /// The sandbox itself (ID, name, attempt, state, creation time).
    pub sandbox: Container,
    /// The pod IPs, primary first.
    pub ips: Vec<String>,
}

/// One event from the runtime's event stream, in our model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEvent {
    /// The container or sandbox the event is about.
    pub id: ContainerId,
    /// What happened.
    pub kind: ContainerEventKind,
    /// The runtime's time of the event.
    pub created_at: Option<SystemTime>,
    /// The sandbox of the container (or the sandbox itself), at event time.
    pub sandbox: Option<SandboxSnapshot>,
    /// The statuses of the sandbox's containers at event time.
    pub containers: Vec<Container>,
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
