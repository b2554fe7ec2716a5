//! Every figure pleg exports, as typed `prometheus-client` families, and the
//! few metric types of its own that they are made of.
//!
//! # Where figures are written
//! Each family has one writer: the core (events, relists, status fetches,
//! running counts, terminations), the stream driver (connections, stream
//! events, stale drops, mode and state), the hub (subscribers, discards,
//! publications), the runtime adapter (unknown values, skipped records, CRI
//! requests) and [`Instrumented`](crate::runtime::Instrumented) (runtime
//! operations). Readers ([`crate::Pleg::stats`], `/metrics`) only load.
//!
//! # Names
//! The kubelet's names are kept (without its `kubelet_` prefix, which a
//! registration prefix restores), and so are pleg's own since the first
//! daemon: every name, and its `# TYPE` line, is what the hand-written
//! exposition served before. prometheus-client's `Counter` writes its
//! samples as `<name>_total` under `# TYPE <name> counter`, the `OpenMetrics`
//! way; pleg's counters are [`Count`]s instead, which write the sample under
//! exactly the registered name, so `pleg_events_total`,
//! `pleg_discard_events` and `evented_pleg_connection_success_count` read
//! the same as before to a Prometheus text-format parser. Histograms are
//! [`Histogram`]s: lock-free, with the kubelet's buckets.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::event::{EventSource, EventType};
use crate::model::{ContainerState, EntryKind};
use crate::stream::{Mode, StaleReason, StreamState};

/// Upper bounds, in seconds, of the buckets the kubelet uses for its PLEG
/// latency histograms (Prometheus' default buckets).
pub const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds, in seconds, for the stream's split of an event's way
/// through pleg: 100 µs to 2.5 s, so that a millisecond target is visible.
pub const FINE_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A count as a gauge's value (saturating).
pub(crate) fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A monotonic counter whose sample carries exactly the name it was
/// registered under (see the module docs). Clones share the count.
#[derive(Clone, Debug, Default)]
pub struct Count(Arc<AtomicU64>);

impl Count {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl TypedMetric for Count {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Count {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        // A gauge's sample line is `name{labels} value`: the name as
        // registered, with no `_total` added.
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// The tokio runtime's alive tasks, read when `/metrics` is scraped: a
/// gauge that climbs without bound under steady churn is a task leak. It
/// reads the runtime it is encoded on (the daemon's), and 0 outside one.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioAliveTasks;

impl TokioAliveTasks {
    /// The alive tasks of the current tokio runtime, 0 outside one.
    pub fn get(self) -> u64 {
        tokio::runtime::Handle::try_current().map_or(0, |h| {
            u64::try_from(h.metrics().num_alive_tasks()).unwrap_or(u64::MAX)
        })
    }
}

impl TypedMetric for TokioAliveTasks {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for TokioAliveTasks {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// A monotonic count kept by another component (the log writer's dropped
/// lines) and read when scraped; 0 until its source is set. Written like
/// [`Count`]. Clones share the source.
#[derive(Clone, Default)]
pub struct ExternalCount(Arc<std::sync::OnceLock<CountSource>>);

type CountSource = Box<dyn Fn() -> u64 + Send + Sync>;

impl ExternalCount {
    /// Reads the count from `source` from now on; `false` (and no change) if
    /// a source was set already.
    pub fn set_source(&self, source: impl Fn() -> u64 + Send + Sync + 'static) -> bool {
        self.0.set(Box::new(source)).is_ok()
    }

    /// The count now.
    pub fn get(&self) -> u64 {
        self.0.get().map_or(0, |source| source())
    }
}

impl fmt::Debug for ExternalCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ExternalCount").field(&self.get()).finish()
    }
}

impl TypedMetric for ExternalCount {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ExternalCount {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// The daemon's own figures, beside the generator's: its servers'
/// connections and its log writer. The servers write them; the daemon
/// registers them ([`ServerMetrics::register`]).
#[derive(Clone, Debug, Default)]
pub struct ServerMetrics {
    /// Log lines the non-blocking writer dropped because its queue was full.
    pub log_lines_dropped: ExternalCount,
    /// HTTP connections open now.
    pub http_connections_open: Gauge,
    /// HTTP connections closed to make room at the connection cap (the
    /// oldest idle), or refused because every one was busy.
    pub http_connections_shed: Count,
    /// gRPC connections refused because the peer's user is not allowed.
    pub grpc_connections_refused: ExternalCount,
}

impl ServerMetrics {
    /// Registers every family, each name with `prefix`.
    pub fn register(&self, registry: &mut Registry, prefix: &str) {
        macro_rules! r {
            ($name:expr, $help:expr, $metric:expr $(,)?) => {
                registry.register(
                    format!("{prefix}{}", $name),
                    $help.trim_end_matches('.'),
                    $metric,
                )
            };
        }
        r!(
            "pleg_log_lines_dropped_total",
            "Log lines dropped because the log writer's queue was full.",
            self.log_lines_dropped.clone(),
        );
        r!(
            "pleg_http_connections_open",
            "HTTP connections open on the health and metrics port.",
            self.http_connections_open.clone(),
        );
        r!(
            "pleg_http_connections_shed_total",
            "HTTP connections closed at the connection cap: the oldest idle one to make room, or a new one when every one was busy.",
            self.http_connections_shed.clone(),
        );
        r!(
            "pleg_grpc_connections_refused_total",
            "gRPC connections refused because the peer's user is not allowed.",
            self.grpc_connections_refused.clone(),
        );
    }
}

/// A histogram of durations with fixed buckets, lock-free. Clones share it.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative), then above all.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(&DEFAULT_BUCKETS)
    }
}

/// A copy of a histogram's state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, cumulative count), ascending.
    pub buckets: Vec<(f64, u64)>,
    /// Observations in all.
    pub count: u64,
    /// Sum of observations, in seconds.
    pub sum: f64,
}

impl Histogram {
    /// A histogram with these ascending upper bounds, in seconds.
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram(Arc::new(HistogramInner {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }))
    }

    /// Records one duration.
    pub fn observe(&self, value: Duration) {
        let inner = &self.0;
        let seconds = value.as_secs_f64();
        let slot = inner
            .bounds
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(inner.bounds.len());
        if let Some(c) = inner.counts.get(slot) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The current state.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let inner = &self.0;
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(inner.bounds.len());
        for (bound, count) in inner.bounds.iter().zip(&inner.counts) {
            cumulative += count.load(Ordering::Relaxed);
            buckets.push((*bound, cumulative));
        }
        let over = inner.counts.last().map_or(0, |c| c.load(Ordering::Relaxed));
        HistogramSnapshot {
            buckets,
            count: cumulative + over,
            sum: Duration::from_nanos(inner.sum_nanos.load(Ordering::Relaxed)).as_secs_f64(),
        }
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let inner = &self.0;
        // Per-bucket (not cumulative) counts; the encoder accumulates, and
        // reads `f64::MAX` as `+Inf`.
        let mut buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .zip(&inner.counts)
            .map(|(bound, count)| (*bound, count.load(Ordering::Relaxed)))
            .collect();
        let over = inner.counts.last().map_or(0, |c| c.load(Ordering::Relaxed));
        buckets.push((f64::MAX, over));
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = Duration::from_nanos(inner.sum_nanos.load(Ordering::Relaxed)).as_secs_f64();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A family that is listed (HELP and TYPE) even before its first series:
/// prometheus-client leaves empty families out, as the Go client does, but
/// pleg has always listed every family, so that dashboards and alerts find
/// them from the start.
#[derive(Debug)]
pub(crate) struct Listed<M>(pub(crate) M);

impl<M: EncodeMetric> EncodeMetric for Listed<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// A label value that is free text from the runtime (a termination
/// reason): escaped as the text format requires, since prometheus-client
/// writes label values as they are.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FreeText(pub String);

impl EncodeLabelValue for FreeText {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        use fmt::Write as _;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// `type` and `source` of `pleg_events_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EventLabels {
    /// The event type.
    pub r#type: EventType,
    /// Where pleg learned of it.
    pub source: EventSource,
}

/// `container_type`, `exit_code` and `reason` of
/// `terminated_containers_total` (the kubelet's, 1.37).
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TerminatedLabels {
    /// `container` or `sandbox`: CRI cannot tell init or ephemeral
    /// containers from the others.
    pub container_type: EntryKind,
    /// The exit code, or `unknown` where the runtime gave none.
    pub exit_code: ExitCodeLabel,
    /// The runtime's reason, or empty.
    pub reason: FreeText,
}

/// An exit code as a label value: the number, or `unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExitCodeLabel(pub Option<i32>);

impl EncodeLabelValue for ExitCodeLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        use fmt::Write as _;
        match self.0 {
            Some(code) => write!(encoder, "{code}"),
            None => encoder.write_str("unknown"),
        }
    }
}

/// `reason` of `pleg_stale_events_dropped_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StaleLabels {
    /// Why the event was dropped.
    pub reason: StaleReason,
}

/// `container_state` of `running_containers`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ContainerStateLabels {
    /// The state.
    pub container_state: ContainerState,
}

/// `mode` of `pleg_mode`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ModeLabels {
    /// The mode.
    pub mode: Mode,
}

/// `state` of `pleg_stream_state`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StreamStateLabels {
    /// The state.
    pub state: StreamState,
}

/// The generator's own families (the runtime adapter's and the hub's are
/// registered beside them; see [`crate::Pleg::register_metrics`]).
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) relist_duration: Histogram,
    pub(crate) relist_interval: Histogram,
    pub(crate) pod_relist_duration: Histogram,
    pub(crate) last_seen: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub(crate) running_pods: Gauge<i64>,
    pub(crate) running_containers: Family<ContainerStateLabels, Gauge<i64>>,
    pub(crate) events: Family<EventLabels, Count>,
    pub(crate) terminated: Family<TerminatedLabels, Count>,
    pub(crate) relists: Count,
    pub(crate) relist_failures: Count,
    pub(crate) status_failures: Count,
    pub(crate) duplicates_dropped: Count,
    /// Pods whose status fetch fails now (their events are held back).
    pub(crate) pods_status_failing: Gauge<i64>,
    /// Wall-clock steps seen (the clock set forward or back).
    pub(crate) clock_steps: Count,
    pub(crate) stream: StreamMetrics,
}

/// The stream driver's families.
#[derive(Debug)]
pub(crate) struct StreamMetrics {
    pub(crate) connection_successes: Count,
    pub(crate) connection_errors: Count,
    pub(crate) latency: Histogram,
    /// The runtime's time of an event to pleg's reader holding it decoded.
    pub(crate) delivery: Histogram,
    /// pleg's reader holding an event to the event applied and handed to
    /// the subscribers.
    pub(crate) apply: Histogram,
    pub(crate) received: Count,
    pub(crate) applied: Count,
    pub(crate) stale: Family<StaleLabels, Count>,
    pub(crate) unresolved: Count,
    pub(crate) gaps: Count,
    /// Events dropped because the stream's local buffer was full.
    pub(crate) buffer_overflows: Count,
    /// Liveness probes of the runtime that it did not answer.
    pub(crate) probe_failures: Count,
    pub(crate) fallbacks: Count,
    pub(crate) promotions: Count,
    pub(crate) mode: Family<ModeLabels, Gauge<i64>>,
    pub(crate) state: Family<StreamStateLabels, Gauge<i64>>,
}

impl Default for StreamMetrics {
    fn default() -> Self {
        StreamMetrics {
            connection_successes: Count::default(),
            connection_errors: Count::default(),
            latency: Histogram::default(),
            delivery: Histogram::new(&FINE_BUCKETS),
            apply: Histogram::new(&FINE_BUCKETS),
            received: Count::default(),
            applied: Count::default(),
            stale: Family::default(),
            unresolved: Count::default(),
            gaps: Count::default(),
            buffer_overflows: Count::default(),
            probe_failures: Count::default(),
            fallbacks: Count::default(),
            promotions: Count::default(),
            mode: Family::default(),
            state: Family::default(),
        }
    }
}

impl Metrics {
    /// Every family, with every series whose labels are known in advance
    /// present at zero (so a dashboard sees them before the first event).
    pub(crate) fn new() -> Self {
        let metrics = Metrics::default();
        for &state in ContainerState::ALL {
            drop(
                metrics
                    .running_containers
                    .get_or_create(&ContainerStateLabels {
                        container_state: state,
                    }),
            );
        }
        for &kind in EventType::ALL {
            for &source in EventSource::ALL {
                drop(metrics.events.get_or_create(&EventLabels {
                    r#type: kind,
                    source,
                }));
            }
        }
        for &reason in StaleReason::ALL {
            drop(metrics.stream.stale.get_or_create(&StaleLabels { reason }));
        }
        metrics.stream.set_mode(Mode::Generic);
        metrics.stream.set_state(StreamState::Stopped);
        metrics
    }

    /// Counts one published event.
    pub(crate) fn event(&self, kind: EventType, source: EventSource) {
        self.events
            .get_or_create(&EventLabels {
                r#type: kind,
                source,
            })
            .inc();
    }

    /// Events published of one kind and source.
    pub(crate) fn events_of(&self, kind: EventType, source: EventSource) -> u64 {
        self.events
            .get(&EventLabels {
                r#type: kind,
                source,
            })
            .map_or(0, |c| c.get())
    }
}

impl StreamMetrics {
    pub(crate) fn set_mode(&self, mode: Mode) {
        for &m in Mode::ALL {
            self.mode
                .get_or_create(&ModeLabels { mode: m })
                .set(i64::from(m == mode));
        }
    }

    pub(crate) fn set_state(&self, state: StreamState) {
        for &s in StreamState::ALL {
            self.state
                .get_or_create(&StreamStateLabels { state: s })
                .set(i64::from(s == state));
        }
    }

    /// Stale drops of one reason.
    pub(crate) fn stale_of(&self, reason: StaleReason) -> u64 {
        self.stale
            .get(&StaleLabels { reason })
            .map_or(0, |c| c.get())
    }
}

/// The hub's families.
#[derive(Clone, Debug, Default)]
pub struct HubMetrics {
    /// Events missed by lagging subscribers.
    pub discarded: Count,
    /// Events handed to the hub, before filtering.
    pub published: Count,
    /// Live subscriptions.
    pub subscribers: Gauge<i64>,
    /// Items the replay ring holds.
    pub replay_ring: Gauge<i64>,
    /// Subscriptions that named a resume point, by outcome.
    pub resumes: Family<ResumeLabels, Count>,
    /// Items replayed from the ring to resuming subscribers.
    pub replayed: Count,
}

crate::naming::named_enum! {
    /// How a subscription's resume point turned out.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum ResumeOutcome {
        /// The point was in the ring: what followed it was replayed.
        Replayed = "replayed",
        /// What followed the point had left the ring: `Resync` (replay expired).
        Expired = "expired",
        /// The point was of another run: `Resync` (epoch changed).
        EpochChanged = "epoch_changed",
        /// The point lay past the run's last item: refused.
        Ahead = "ahead",
    }
}

/// `outcome` of `pleg_watch_resumes_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResumeLabels {
    /// How it turned out.
    pub outcome: ResumeOutcome,
}

impl HubMetrics {
    /// Counts a resume of this outcome.
    pub(crate) fn resumed(&self, outcome: ResumeOutcome) {
        self.resumes.get_or_create(&ResumeLabels { outcome }).inc();
    }

    /// Resumes of one outcome so far.
    #[cfg(test)]
    pub(crate) fn resumes_of(&self, outcome: ResumeOutcome) -> u64 {
        self.resumes.get_or_create(&ResumeLabels { outcome }).get()
    }

    /// Creates every outcome's counter, so that `/metrics` lists them at 0.
    pub(crate) fn precreate(&self) {
        for &outcome in ResumeOutcome::ALL {
            let _ = self.resumes.get_or_create(&ResumeLabels { outcome });
        }
    }
}

/// Every family pleg serves, in the order `/metrics` has always listed
/// them, then the newer ones.
// One registration per family, in the order /metrics lists them.
#[allow(clippy::too_many_lines)]
pub(crate) fn register_all(
    registry: &mut Registry,
    prefix: &str,
    metrics: &Metrics,
    runtime: &crate::runtime::RuntimeStats,
    operations: &crate::runtime::OperationMetrics,
    hub: &HubMetrics,
) {
    let stream = &metrics.stream;
    macro_rules! r {
        ($name:expr, $help:expr, $metric:expr $(,)?) => {
            // prometheus-client ends every help text with a period.
            registry.register(
                format!("{prefix}{}", $name),
                $help.trim_end_matches('.'),
                $metric,
            )
        };
    }
    // The kubelet's families.
    r!(
        "pleg_relist_duration_seconds",
        "Duration in seconds for relisting pods in PLEG.",
        metrics.relist_duration.clone(),
    );
    r!(
        "pleg_relist_interval_seconds",
        "Interval in seconds between relisting in PLEG.",
        metrics.relist_interval.clone(),
    );
    r!(
        "pleg_last_seen_seconds",
        "Timestamp in seconds when PLEG was last seen active: the start of the last relist whose listing succeeded (0 before the first).",
        metrics.last_seen.clone(),
    );
    r!(
        "pleg_discard_events",
        "The number of discard events in PLEG: events that lagging subscribers missed.",
        hub.discarded.clone(),
    );
    r!(
        "evented_pleg_connection_success_count",
        "The number of times a streaming client was obtained to receive CRI Events.",
        stream.connection_successes.clone(),
    );
    r!(
        "evented_pleg_connection_error_count",
        "The number of errors encountered during the establishment of streaming connection with the CRI runtime, and of streams that broke.",
        stream.connection_errors.clone(),
    );
    r!(
        "evented_pleg_connection_latency_seconds",
        "The latency of streaming connection with the CRI runtime, measured in seconds: when an event was applied minus the runtime's time of it.",
        stream.latency.clone(),
    );
    r!(
        "pleg_stream_delivery_seconds",
        "The runtime's time of a container event to pleg's stream reader holding it decoded: the runtime's sending, the socket and decoding.",
        stream.delivery.clone(),
    );
    r!(
        "pleg_stream_apply_seconds",
        "pleg's stream reader holding a container event to the event applied and handed to the subscribers: the local buffer, waiting for the core (a relist holds it), applying and fan-out.",
        stream.apply.clone(),
    );
    r!(
        "running_pods",
        "Number of pods that have a running pod sandbox, as of the last successful listing.",
        metrics.running_pods.clone(),
    );
    r!(
        "running_containers",
        "Number of containers (not sandboxes) by state, as of the last successful listing.",
        Listed(metrics.running_containers.clone()),
    );
    // pleg's own.
    r!(
        "pleg_events_total",
        "Pod lifecycle events published, by type and by where pleg learned of them.",
        Listed(metrics.events.clone()),
    );
    r!(
        "pleg_events_published_total",
        "Events handed to the subscriber hub, before filtering.",
        hub.published.clone(),
    );
    r!(
        "pleg_relists_total",
        "Relists whose listing succeeded.",
        metrics.relists.clone(),
    );
    r!(
        "pleg_relist_failures_total",
        "Relists whose listing failed.",
        metrics.relist_failures.clone(),
    );
    r!(
        "pleg_status_fetch_failures_total",
        "Pod status fetches that failed.",
        metrics.status_failures.clone(),
    );
    r!(
        "pleg_cri_requests_total",
        "Runtime calls that ended, by method and outcome (a gRPC code such as OK, or Timeout).",
        Listed(runtime.requests().clone()),
    );
    r!(
        "pleg_cri_request_duration_seconds",
        "Duration in seconds of runtime calls that ended, by method, answer decoding included.",
        Listed(runtime.request_durations().clone()),
    );
    r!(
        "pleg_runtime_unknown_values_total",
        "State values from the runtime outside the CRI enums, treated as unknown.",
        runtime.unknown_values_count().clone(),
    );
    r!(
        "pleg_runtime_skipped_records_total",
        "Records from the runtime that could not be used and were left out.",
        runtime.skipped_records_count().clone(),
    );
    r!(
        "pleg_stream_events_received_total",
        "Container events received from the runtime's event stream.",
        stream.received.clone(),
    );
    r!(
        "pleg_stream_events_applied_total",
        "Container events from the stream applied to the records and the cache.",
        stream.applied.clone(),
    );
    r!(
        "pleg_stale_events_dropped_total",
        "Container events from the stream dropped as stale, by reason.",
        Listed(stream.stale.clone()),
    );
    r!(
        "pleg_stream_unresolved_events_total",
        "Container events from the stream whose pod could not be resolved.",
        stream.unresolved.clone(),
    );
    r!(
        "pleg_stream_gaps_total",
        "Container events showing that the stream lost earlier ones (each asks for a relist).",
        stream.gaps.clone(),
    );
    r!(
        "pleg_stream_fallbacks_total",
        "Falls back from the event stream to relisting at the generic period.",
        stream.fallbacks.clone(),
    );
    r!(
        "pleg_stream_promotions_total",
        "Returns to the event stream after a fallback.",
        stream.promotions.clone(),
    );
    r!(
        "pleg_mode",
        "Which generator is in charge: 1 for the current mode, 0 for the other.",
        Listed(stream.mode.clone()),
    );
    r!(
        "pleg_stream_state",
        "State of the event stream: 1 for the current state, 0 for the others.",
        Listed(stream.state.clone()),
    );
    r!(
        "pleg_subscribers",
        "Live subscriptions.",
        hub.subscribers.clone(),
    );
    // Newer: the kubelet's (1.36, 1.37), then pleg's.
    r!(
        "pleg_pod_relist_duration_seconds",
        "Duration in seconds for relisting one pod on demand (request_relist, request_reinspect).",
        metrics.pod_relist_duration.clone(),
    );
    r!(
        "terminated_containers_total",
        "Containers and sandboxes that terminated, by container type (container or sandbox: CRI tells no init or ephemeral containers apart), exit code (unknown where the runtime gave none) and reason.",
        Listed(metrics.terminated.clone()),
    );
    r!(
        "pleg_runtime_operations_total",
        "Calls pleg made through its runtime seam, by operation and outcome.",
        Listed(operations.calls.clone()),
    );
    r!(
        "pleg_runtime_operation_duration_seconds",
        "Duration in seconds of calls pleg made through its runtime seam, by operation.",
        Listed(operations.durations.clone()),
    );
    r!(
        "pleg_pods_status_failing",
        "Pods whose last status fetch failed: their events are held back until a fetch succeeds.",
        metrics.pods_status_failing.clone(),
    );
    r!(
        "pleg_clock_steps_total",
        "Wall-clock steps seen (the system clock set forward or back by more than 2 s).",
        metrics.clock_steps.clone(),
    );
    r!(
        "pleg_stream_buffer_overflows_total",
        "Container events dropped because the stream's local buffer was full (each brings a relist and a Resync).",
        stream.buffer_overflows.clone(),
    );
    r!(
        "pleg_runtime_probe_failures_total",
        "Liveness probes of the runtime that it did not answer in time.",
        stream.probe_failures.clone(),
    );
    r!(
        "pleg_replay_ring_items",
        "Items (events and stream-gap Resyncs) the replay ring holds for watches that resume.",
        hub.replay_ring.clone(),
    );
    r!(
        "pleg_watch_resumes_total",
        "Subscriptions that named a resume point (epoch and seq), by outcome: replayed, expired, epoch_changed, ahead.",
        Listed(hub.resumes.clone()),
    );
    r!(
        "pleg_watch_replayed_items_total",
        "Items replayed from the ring to subscriptions that resumed.",
        hub.replayed.clone(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Registers a family under `prefix` + `name`.
    fn register(
        registry: &mut Registry,
        prefix: &str,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        registry.register(
            format!("{prefix}{name}"),
            help.trim_end_matches('.'),
            metric,
        );
    }

    #[test]
    fn buckets_are_cumulative_and_the_sum_adds_up() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.005, 1));
        assert_eq!(s.buckets[3], (0.05, 2));
        assert_eq!(s.buckets.last(), Some(&(10.0, 2)));
        assert!((s.sum - 60.033).abs() < 1e-9);
    }

    fn exposition(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode_registry(&mut out, registry)
            .expect("writing to a String");
        out
    }

    #[test]
    fn counts_keep_their_exact_name_under_type_counter() {
        let mut registry = Registry::default();
        let discarded = Count::default();
        discarded.inc_by(3);
        register(
            &mut registry,
            "kubelet_",
            "pleg_discard_events",
            "Discarded.",
            discarded,
        );
        let total = Count::default();
        register(&mut registry, "", "pleg_relists_total", "Relists.", total);
        assert_eq!(
            exposition(&registry),
            "# HELP kubelet_pleg_discard_events Discarded.\n\
             # TYPE kubelet_pleg_discard_events counter\n\
             kubelet_pleg_discard_events 3\n\
             # HELP pleg_relists_total Relists.\n\
             # TYPE pleg_relists_total counter\n\
             pleg_relists_total 0\n"
        );
    }

    #[test]
    fn histograms_end_with_inf_equal_to_the_count() {
        let mut registry = Registry::default();
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(12));
        register(&mut registry, "", "x_seconds", "X.", h);
        assert_eq!(
            exposition(&registry),
            "# HELP x_seconds X.\n\
             # TYPE x_seconds histogram\n\
             x_seconds_sum 12.55\n\
             x_seconds_count 3\n\
             x_seconds_bucket{le=\"0.1\"} 1\n\
             x_seconds_bucket{le=\"1.0\"} 2\n\
             x_seconds_bucket{le=\"+Inf\"} 3\n"
        );
    }

    #[test]
    fn every_stream_state_mode_event_and_stale_reason_has_a_series_from_the_start() {
        let metrics = Metrics::new();
        let stream = &metrics.stream;
        for &state in StreamState::ALL {
            let value = stream
                .state
                .get(&StreamStateLabels { state })
                .map(|g| g.get());
            assert_eq!(
                value,
                Some(i64::from(state == StreamState::Stopped)),
                "{state}"
            );
        }
        for &mode in Mode::ALL {
            let value = stream.mode.get(&ModeLabels { mode }).map(|g| g.get());
            assert_eq!(value, Some(i64::from(mode == Mode::Generic)), "{mode}");
        }
        for &reason in StaleReason::ALL {
            assert!(
                stream.stale.get(&StaleLabels { reason }).is_some(),
                "{reason}"
            );
        }
        for &kind in EventType::ALL {
            for &source in EventSource::ALL {
                assert_eq!(metrics.events_of(kind, source), 0);
                assert!(
                    metrics
                        .events
                        .get(&EventLabels {
                            r#type: kind,
                            source
                        })
                        .is_some()
                );
            }
        }
    }

    #[test]
    fn free_text_label_values_are_escaped() {
        let mut registry = Registry::default();
        let family: Family<TerminatedLabels, Count> = Family::default();
        family
            .get_or_create(&TerminatedLabels {
                container_type: EntryKind::Container,
                exit_code: ExitCodeLabel(None),
                reason: FreeText("a \"quoted\" \\ reason\nwith a newline".into()),
            })
            .inc();
        register(
            &mut registry,
            "",
            "terminated_containers_total",
            "T.",
            family,
        );
        let text = exposition(&registry);
        assert!(
            text.contains(
                "terminated_containers_total{container_type=\"container\",exit_code=\"unknown\",reason=\"a \\\"quoted\\\" \\\\ reason\\nwith a newline\"} 1\n"
            ),
            "{text}"
        );
    }
}
