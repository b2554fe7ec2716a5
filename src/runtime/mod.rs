//! The seam between the generator and a container runtime.
//!
//! [`Runtime`] is what the generator needs from a runtime: a listing of every
//! pod with its sandboxes and containers in all states, the status of one
//! pod, and the container event stream. Implementations convert the
//! runtime's data into our model at the edge; a value they do not understand
//! becomes `Unknown` and is counted in [`RuntimeStats`], never a panic.
//!
//! Calls are async and cancellable (dropping the future abandons the call).
//! The generator wraps its runtime in [`Instrumented`], which bounds every
//! call with the runtime request timeout and counts and times it by
//! [`Operation`] and outcome; the CRI adapter counts the RPCs behind them
//! by [`CriMethod`] and gRPC code.
//!
//! [`PodControl`] is the small seam for what a product feature asks of the
//! runtime beyond watching it: stopping and removing a pod.
//!
//! `fake::FakeRuntime` (feature `test-util`) is a scripted, deterministic
//! runtime for tests and benchmarks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::family::Family;
use tokio::time::Instant;

use crate::duration::GoDuration;
use crate::metrics::{Count, Histogram};
use crate::model::{Container, ContainerId, ContainerState, Listing, Pod, PodMeta, PodStatus};
use crate::naming::named_enum;

pub mod cri;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
mod liveness;

pub use liveness::{Liveness, Silence};

/// A boxed, sendable future, so that [`Runtime`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Result of a runtime call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

named_enum! {
    /// A call through the [`Runtime`] seam.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum Operation {
        /// [`Runtime::list_pods`].
        ListPods = "ListPods",
        /// [`Runtime::pod_status`].
        PodStatus = "PodStatus",
        /// [`Runtime::container_events`].
        ContainerEvents = "ContainerEvents",
        /// [`PodControl::stop_pod`].
        StopPod = "StopPod",
        /// [`PodControl::remove_pod`].
        RemovePod = "RemovePod",
        /// [`Runtime::probe`]: is the runtime answering?
        Probe = "Probe",
    }
}

named_enum! {
    /// A CRI v1 `RuntimeService` method pleg (or its test kit's workload
    /// driver, the last five) calls.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum CriMethod {
        /// The handshake.
        Version = "Version",
        /// Half of a listing.
        ListPodSandbox = "ListPodSandbox",
        /// The other half of a listing.
        ListContainers = "ListContainers",
        /// A sandbox's status.
        PodSandboxStatus = "PodSandboxStatus",
        /// A container's status.
        ContainerStatus = "ContainerStatus",
        /// The event stream.
        GetContainerEvents = "GetContainerEvents",
        /// Stopping a pod.
        StopPodSandbox = "StopPodSandbox",
        /// Removing a pod.
        RemovePodSandbox = "RemovePodSandbox",
        /// Running a pod (crictl `runp`).
        RunPodSandbox = "RunPodSandbox",
        /// Creating a container (crictl `create`).
        CreateContainer = "CreateContainer",
        /// Starting a container (crictl `start`).
        StartContainer = "StartContainer",
        /// Stopping a container (crictl `stop`).
        StopContainer = "StopContainer",
        /// Removing a container (crictl `rm`).
        RemoveContainer = "RemoveContainer",
    }
}

/// What failed: a call through the seam, or one RPC behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Call {
    /// A call through the [`Runtime`] seam.
    Operation(Operation),
    /// A CRI RPC.
    Cri(CriMethod),
}

impl Call {
    /// The call's name: `ListPods`, `ListPodSandbox`.
    pub fn as_str(self) -> &'static str {
        match self {
            Call::Operation(op) => op.as_str(),
            Call::Cri(method) => method.as_str(),
        }
    }
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Operation> for Call {
    fn from(op: Operation) -> Self {
        Call::Operation(op)
    }
}

impl From<CriMethod> for Call {
    fn from(method: CriMethod) -> Self {
        Call::Cri(method)
    }
}

/// The cause behind a failed call, kept for callers that look deeper.
pub type Source = Arc<dyn std::error::Error + Send + Sync>;

/// A runtime call that failed. [`code`](Self::code) tells a missing or
/// unreachable runtime (`Unavailable`), a slow one (`DeadlineExceeded`) and
/// a vanished pod or container (`NotFound`) apart.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The call took longer than the runtime request timeout.
    #[error("runtime call {call} timed out after {}", GoDuration(*after))]
    Timeout {
        /// The call, for example `ListPods`.
        call: Call,
        /// The timeout that expired.
        after: Duration,
    },
    /// The runtime does not implement the call (containerd 1.6 and
    /// `GetContainerEvents`, for example).
    #[error("runtime call {call} is not implemented by the runtime: {message}")]
    Unimplemented {
        /// The call.
        call: Call,
        /// What the runtime said.
        message: String,
    },
    /// The runtime answered with an error, or could not be reached.
    #[error("runtime call {call} failed: {message}")]
    Failed {
        /// The call, for example `PodSandboxStatus`.
        call: Call,
        /// The gRPC code (`Unknown` when the runtime gave none).
        code: tonic::Code,
        /// What the runtime said.
        message: String,
        /// The cause, when there is one.
        #[source]
        source: Option<Source>,
    },
}

impl Error {
    /// A failure without a code or cause of its own.
    pub fn failed(call: impl Into<Call>, message: impl Into<String>) -> Self {
        Error::Failed {
            call: call.into(),
            code: tonic::Code::Unknown,
            message: message.into(),
            source: None,
        }
    }

    /// The call that failed.
    pub fn call(&self) -> Call {
        match self {
            Error::Timeout { call, .. }
            | Error::Unimplemented { call, .. }
            | Error::Failed { call, .. } => *call,
        }
    }

    /// The gRPC code of the failure: `DeadlineExceeded` for a timeout,
    /// `Unimplemented`, or the runtime's.
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::Timeout { .. } => tonic::Code::DeadlineExceeded,
            Error::Unimplemented { .. } => tonic::Code::Unimplemented,
            Error::Failed { code, .. } => *code,
        }
    }

    /// Whether the runtime lacks the call.
    pub fn is_unimplemented(&self) -> bool {
        matches!(self, Error::Unimplemented { .. })
    }

    /// The runtime ended its event stream.
    pub(crate) fn stream_ended() -> Self {
        Error::Failed {
            call: Call::Cri(CriMethod::GetContainerEvents),
            code: tonic::Code::Unavailable,
            message: "the runtime ended the event stream".into(),
            source: None,
        }
    }
}

/// What the generator needs from a container runtime.
pub trait Runtime: Send + Sync + 'static {
    /// Every pod with its sandboxes and containers, in all states.
    fn list_pods(&self) -> BoxFuture<'_, Result<Listing>>;

    /// The status of one pod that the last listing returned.
    fn pod_status<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Result<PodStatus>>;

    /// Counters kept by the runtime adapter: values it could not decode,
    /// records it could not use, RPCs it made.
    fn stats(&self) -> &RuntimeStats;

    /// Asks the runtime, as cheaply as it can, whether it answers: the
    /// health probe while the event stream is in charge and relists are
    /// rare. CRI runtimes answer `Version`; the default lists pods.
    fn probe(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { self.list_pods().await.map(drop) })
    }

    /// Opens the runtime's container event stream (CRI `GetContainerEvents`).
    /// A runtime without one answers [`Error::Unimplemented`], which is the
    /// default.
    fn container_events(&self) -> BoxFuture<'_, Result<EventStream>> {
        Box::pin(async {
            Err(Error::Unimplemented {
                call: Call::Operation(Operation::ContainerEvents),
                message: "this runtime has no event stream".into(),
            })
        })
    }
}

impl<R: Runtime + ?Sized> Runtime for Arc<R> {
    fn list_pods(&self) -> BoxFuture<'_, Result<Listing>> {
        (**self).list_pods()
    }

    fn pod_status<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Result<PodStatus>> {
        (**self).pod_status(pod)
    }

    fn stats(&self) -> &RuntimeStats {
        (**self).stats()
    }

    fn probe(&self) -> BoxFuture<'_, Result<()>> {
        (**self).probe()
    }

    fn container_events(&self) -> BoxFuture<'_, Result<EventStream>> {
        (**self).container_events()
    }
}

/// Stopping and removing pods: what a product feature asks of the runtime
/// beyond watching it (the toolkit's `delete_after_completion`).
pub trait PodControl: Send + Sync + 'static {
    /// Stops a pod sandbox and its containers (crictl `stopp`).
    fn stop_pod<'a>(&'a self, sandbox_id: &'a ContainerId) -> BoxFuture<'a, Result<()>>;

    /// Removes a stopped pod sandbox and its containers (crictl `rmp`).
    fn remove_pod<'a>(&'a self, sandbox_id: &'a ContainerId) -> BoxFuture<'a, Result<()>>;
}

/// A stream of container events; it ends (or yields an error) when the
/// connection breaks. CRI has no resume token: what happens while no stream
/// is open is found by relisting.
pub type EventStream = Pin<Box<dyn futures_core::Stream<Item = Result<ContainerEvent>> + Send>>;

named_enum! {
    /// What happened to a container or sandbox, as an event stream reports it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum ContainerEventKind {
        /// Created, not started.
        Created = "created",
        /// Started (for a sandbox: ready).
        Started = "started",
        /// Stopped: the process exited or was killed (for a sandbox: not ready).
        Stopped = "stopped",
        /// Removed from the runtime.
        Deleted = "deleted",
    }
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

/// How an RPC ended: a gRPC code (`OK` included) or the deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RpcOutcome {
    /// The runtime answered with this code.
    Code(tonic::Code),
    /// No answer within the deadline.
    Timeout,
}

impl RpcOutcome {
    /// `OK`, `NotFound`, `Timeout`: as in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RpcOutcome::Code(code) => cri::code_name(code),
            RpcOutcome::Timeout => "Timeout",
        }
    }
}

impl EncodeLabelValue for RpcOutcome {
    fn encode(
        &self,
        encoder: &mut LabelValueEncoder<'_>,
    ) -> std::result::Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// `method` and `code` of `pleg_cri_requests_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CriLabels {
    /// The RPC.
    pub method: CriMethod,
    /// How it ended.
    pub code: RpcOutcome,
}

/// `method` of `pleg_cri_request_duration_seconds`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CriMethodOnly {
    /// The RPC.
    pub method: CriMethod,
}

/// Counters kept by a runtime adapter: RPCs by method and outcome, and
/// values received from the runtime that we did not recognise or could not
/// use.
#[derive(Debug)]
pub struct RuntimeStats {
    requests: Family<CriLabels, Count>,
    /// How long RPCs took, by method: the runtime's share of a relist (the
    /// call and tonic's decoding of the answer), which the relist duration
    /// less the two listing calls' share splits from pleg's own.
    request_durations: Family<CriMethodOnly, Histogram>,
    unknown_values: Count,
    skipped_records: Count,
}

impl Default for RuntimeStats {
    /// Every method's duration series, present (empty) from the start.
    fn default() -> Self {
        let stats = RuntimeStats {
            requests: Family::default(),
            request_durations: Family::default(),
            unknown_values: Count::default(),
            skipped_records: Count::default(),
        };
        for &method in CriMethod::ALL {
            drop(
                stats
                    .request_durations
                    .get_or_create(&CriMethodOnly { method }),
            );
        }
        stats
    }
}

impl RuntimeStats {
    fn unknown(&self, what: &'static str, raw: i32) -> ContainerState {
        // Warn on the first unknown value only; the counter tells the rest.
        if self.unknown_values.get() == 0 {
            tracing::warn!(
                value = raw,
                "runtime sent an unknown {what} state; treating it as unknown (counted from now on)"
            );
        } else {
            tracing::debug!(value = raw, "runtime sent an unknown {what} state");
        }
        self.unknown_values.inc();
        ContainerState::Unknown
    }

    /// Counts one RPC that ended.
    pub fn count_request(&self, method: CriMethod, outcome: RpcOutcome) {
        self.requests
            .get_or_create(&CriLabels {
                method,
                code: outcome,
            })
            .inc();
    }

    /// RPCs of one method that ended, whatever their outcome.
    pub fn calls_of(&self, method: CriMethod) -> u64 {
        RPC_OUTCOMES
            .iter()
            .map(|&outcome| self.outcome_count(method, outcome))
            .sum()
    }

    /// RPCs of one method that ended with this outcome.
    pub fn outcome_count(&self, method: CriMethod, outcome: RpcOutcome) -> u64 {
        self.requests
            .get(&CriLabels {
                method,
                code: outcome,
            })
            .map_or(0, |c| c.get())
    }

    /// The requests family, for registration.
    pub(crate) fn requests(&self) -> &Family<CriLabels, Count> {
        &self.requests
    }

    /// Times one RPC that ended, whatever its outcome.
    pub fn time_request(&self, method: CriMethod, took: Duration) {
        self.request_durations
            .get_or_create(&CriMethodOnly { method })
            .observe(took);
    }

    /// The request durations family, for registration.
    pub(crate) fn request_durations(&self) -> &Family<CriMethodOnly, Histogram> {
        &self.request_durations
    }

    /// Values outside the enums we know, received so far.
    pub fn unknown_values(&self) -> u64 {
        self.unknown_values.get()
    }

    pub(crate) fn unknown_values_count(&self) -> &Count {
        &self.unknown_values
    }

    /// Counts a record the runtime sent that cannot be used (an empty ID, a
    /// sandbox without metadata, a container whose pod is unknown) and was
    /// left out. The first one is logged as a warning, the rest at debug level.
    pub fn skip_record(&self, what: &str, why: &str) {
        if self.skipped_records.get() == 0 {
            tracing::warn!(
                why = ?why,
                "runtime sent a {what} that cannot be used; skipped it (counted from now on)"
            );
        } else {
            tracing::debug!(why = ?why, "runtime sent a {what} that cannot be used; skipped it");
        }
        self.skipped_records.inc();
    }

    /// Records the runtime sent that could not be used and were left out.
    pub fn skipped_records(&self) -> u64 {
        self.skipped_records.get()
    }

    pub(crate) fn skipped_records_count(&self) -> &Count {
        &self.skipped_records
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

/// Every outcome an RPC can have.
const RPC_OUTCOMES: [RpcOutcome; 18] = {
    use tonic::Code::{
        Aborted, AlreadyExists, Cancelled, DataLoss, DeadlineExceeded, FailedPrecondition,
        Internal, InvalidArgument, NotFound, Ok, OutOfRange, PermissionDenied, ResourceExhausted,
        Unauthenticated, Unavailable, Unimplemented, Unknown,
    };
    [
        RpcOutcome::Code(Ok),
        RpcOutcome::Code(Cancelled),
        RpcOutcome::Code(Unknown),
        RpcOutcome::Code(InvalidArgument),
        RpcOutcome::Code(DeadlineExceeded),
        RpcOutcome::Code(NotFound),
        RpcOutcome::Code(AlreadyExists),
        RpcOutcome::Code(PermissionDenied),
        RpcOutcome::Code(ResourceExhausted),
        RpcOutcome::Code(FailedPrecondition),
        RpcOutcome::Code(Aborted),
        RpcOutcome::Code(OutOfRange),
        RpcOutcome::Code(Unimplemented),
        RpcOutcome::Code(Internal),
        RpcOutcome::Code(Unavailable),
        RpcOutcome::Code(DataLoss),
        RpcOutcome::Code(Unauthenticated),
        RpcOutcome::Timeout,
    ]
};

/// Runs a runtime call with a deadline.
///
/// # Errors
/// The call's own error, or [`Error::Timeout`] naming `call` when it takes longer than `timeout`.
pub async fn bounded<T>(
    call: impl Into<Call>,
    timeout: Duration,
    request: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, request).await {
        Ok(answer) => answer,
        Err(_) => Err(Error::Timeout {
            call: call.into(),
            after: timeout,
        }),
    }
}

/// `operation` and `outcome` of `pleg_runtime_operations_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OperationLabels {
    /// The call.
    pub operation: Operation,
    /// How it ended: `OK`, a gRPC code, or `Timeout`.
    pub outcome: RpcOutcome,
}

/// `operation` of `pleg_runtime_operation_duration_seconds`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OperationOnly {
    /// The call.
    pub operation: Operation,
}

/// What [`Instrumented`] counts and times.
#[derive(Debug)]
pub struct OperationMetrics {
    pub(crate) calls: Family<OperationLabels, Count>,
    pub(crate) durations: Family<OperationOnly, Histogram>,
}

impl Default for OperationMetrics {
    /// Every operation's duration series, present (empty) from the start.
    fn default() -> Self {
        let metrics = OperationMetrics {
            calls: Family::default(),
            durations: Family::default(),
        };
        for &operation in Operation::ALL {
            drop(
                metrics
                    .durations
                    .get_or_create(&OperationOnly { operation }),
            );
        }
        metrics
    }
}

impl OperationMetrics {
    /// Calls of one operation that ended with this outcome.
    pub fn count(&self, operation: Operation, outcome: RpcOutcome) -> u64 {
        self.calls
            .get(&OperationLabels { operation, outcome })
            .map_or(0, |c| c.get())
    }

    fn record<T>(&self, operation: Operation, started: Instant, result: &Result<T>) {
        let outcome = match result {
            Ok(_) => RpcOutcome::Code(tonic::Code::Ok),
            Err(Error::Timeout { .. }) => RpcOutcome::Timeout,
            Err(e) => RpcOutcome::Code(e.code()),
        };
        self.calls
            .get_or_create(&OperationLabels { operation, outcome })
            .inc();
        self.durations
            .get_or_create(&OperationOnly { operation })
            .observe(started.elapsed());
    }
}

/// A runtime whose every call is bounded by the request timeout, counted
/// by operation and outcome, and timed. Opening the event stream has no
/// deadline of its own: containerd answers that call with its first event
/// (see [`cri`]).
#[derive(Debug)]
pub struct Instrumented<R> {
    inner: R,
    request_timeout: Duration,
    metrics: OperationMetrics,
    liveness: Liveness,
}

impl<R: Runtime> Instrumented<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, request_timeout: Duration) -> Self {
        Instrumented {
            inner,
            request_timeout,
            metrics: OperationMetrics::default(),
            liveness: Liveness::default(),
        }
    }

    /// Whether the runtime answers, as learnt from every call.
    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// [`Runtime::probe`], bounded by `timeout` (shorter than the request
    /// timeout: a probe that takes long is no answer).
    ///
    /// # Errors
    /// The probe's error, or [`Error::Timeout`].
    pub async fn probe_within(&self, timeout: Duration) -> Result<()> {
        let timeout = timeout.min(self.request_timeout);
        let in_flight = self.liveness.start(Operation::Probe);
        let started = Instant::now();
        let result = bounded(Operation::Probe, timeout, self.inner.probe()).await;
        self.metrics.record(Operation::Probe, started, &result);
        in_flight.finish(&result);
        result
    }

    /// The wrapped runtime.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// What was counted and timed.
    pub fn operations(&self) -> &OperationMetrics {
        &self.metrics
    }

    async fn measured<T>(
        &self,
        operation: Operation,
        bound: bool,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let result = if bound {
            let in_flight = self.liveness.start(operation);
            let result = bounded(operation, self.request_timeout, call).await;
            in_flight.finish(&result);
            result
        } else {
            call.await
        };
        self.metrics.record(operation, started, &result);
        result
    }
}

impl<R: Runtime> Runtime for Instrumented<R> {
    fn list_pods(&self) -> BoxFuture<'_, Result<Listing>> {
        Box::pin(self.measured(Operation::ListPods, true, self.inner.list_pods()))
    }

    fn pod_status<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Result<PodStatus>> {
        Box::pin(self.measured(Operation::PodStatus, true, self.inner.pod_status(pod)))
    }

    fn stats(&self) -> &RuntimeStats {
        self.inner.stats()
    }

    fn probe(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.measured(Operation::Probe, true, self.inner.probe()))
    }

    fn container_events(&self) -> BoxFuture<'_, Result<EventStream>> {
        Box::pin(self.measured(
            Operation::ContainerEvents,
            false,
            self.inner.container_events(),
        ))
    }
}
