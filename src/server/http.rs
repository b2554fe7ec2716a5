//! Health probes and Prometheus metrics over HTTP, served the way the kubelet
//! serves its healthz port.
//!
//! # Endpoints
//! - `GET /healthz`, `/livez`, `/readyz`: the checks of [`Probe::Health`],
//!   [`Probe::Live`] and [`Probe::Ready`] ([`Daemon::checks`]). `200 ok` when
//!   every check passes; otherwise `503` with one `[-]name failed: reason`
//!   line per failing check and a last line `healthz check failed`. With
//!   `?verbose` (any value) every check is listed, `[+]name ok` or
//!   `[-]name failed: reason`, then `healthz check passed` or
//!   `healthz check failed`. `?exclude=name` (repeatable) skips a check, as
//!   the kubelet does.
//! - `GET /healthz/<check>` (and under `/livez`, `/readyz`): that check
//!   alone; `404` for a name the probe does not run.
//! - `GET /metrics`: Prometheus text exposition format 0.0.4; see
//!   [`render_metrics`] for the families.
//! - Anything else: `404`; another method on a known path: `405`.
//!
//! Text bodies are `text/plain; charset=utf-8` with
//! `X-Content-Type-Options: nosniff`.
//!
//! # Differences from the kubelet
//! The kubelet answers a failing probe with `500` and withholds the reasons
//! of failing checks unless asked for details. pleg answers `503` (what load
//! balancers and probes read as "not now") and gives the reason, since
//! nothing on this port is secret.
//!
//! # What it must never do
//! Handlers only read: they take snapshots of the generator's counters and
//! never call the runtime or change the generator. Rendering is pure
//! ([`render_probe`], [`render_check`], [`render_metrics`]), so tests need
//! no socket.

use std::fmt::{self, Write as _};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::UNIX_EPOCH;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use super::{Check, Daemon, Probe};
use crate::event::{EventSource, EventType};
use crate::evented::{Mode, StreamState};
use crate::generic::StaleReason;
use crate::metrics::HistogramSnapshot;
use crate::model::ContainerState;

/// Content type of probe answers and error pages.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Content type of `/metrics`: the Prometheus text format, version 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the health and metrics listener could not be opened. Every message
/// names the address.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The address is not `host:port`, or its host does not resolve.
    #[error("health address {address:?} is not valid: {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Another socket listens on that address.
    #[error("health address {address} is already in use")]
    InUse {
        /// The address as given.
        address: String,
    },
    /// The process may not listen there.
    #[error("health address {address}: permission denied{hint}")]
    PermissionDenied {
        /// The address as given.
        address: String,
        /// A hint about privileged ports, or empty.
        hint: &'static str,
    },
    /// The host is not an address of this machine.
    #[error("health address {address} is not an address of this machine")]
    NotLocal {
        /// The address as given.
        address: String,
    },
    /// Any other failure to listen.
    #[error("health address {address}: {error}")]
    Other {
        /// The address as given.
        address: String,
        /// What the operating system said.
        error: io::Error,
    },
}

impl BindError {
    /// The address as given.
    pub fn address(&self) -> &str {
        match self {
            BindError::InvalidAddress { address, .. }
            | BindError::InUse { address }
            | BindError::PermissionDenied { address, .. }
            | BindError::NotLocal { address }
            | BindError::Other { address, .. } => address,
        }
    }
}

/// Opens the listener for [`serve`] on `address`: `host:port`, with an IP
/// address (`127.0.0.1:10258`, `[::1]:10258`, `0.0.0.0:10258` for every
/// interface) or a host name (`localhost:10258`). Port 0 picks a free port.
pub async fn bind(address: &str) -> Result<TcpListener, BindError> {
    let candidates = resolve(address).await?;
    let mut last_error = None;
    for candidate in candidates {
        match TcpListener::bind(candidate).await {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some((candidate, error)),
        }
    }
    let address = address.to_string();
    let Some((candidate, error)) = last_error else {
        return Err(BindError::InvalidAddress {
            address,
            reason: "it resolves to no address".into(),
        });
    };
    Err(match error.kind() {
        io::ErrorKind::AddrInUse => BindError::InUse { address },
        io::ErrorKind::PermissionDenied => BindError::PermissionDenied {
            address,
            hint: if candidate.port() < 1024 {
                " (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"
            } else {
                ""
            },
        },
        io::ErrorKind::AddrNotAvailable => BindError::NotLocal { address },
        _ => BindError::Other { address, error },
    })
}

/// The socket addresses `address` stands for, or why it is not `host:port`.
async fn resolve(address: &str) -> Result<Vec<SocketAddr>, BindError> {
    let invalid = |reason: String| BindError::InvalidAddress {
        address: address.to_string(),
        reason,
    };
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(invalid(
            "expected host:port, such as 127.0.0.1:10258".into(),
        ));
    };
    if host.is_empty() {
        return Err(invalid(
            "the host is missing: expected host:port, such as 127.0.0.1:10258 (0.0.0.0:PORT listens on every interface)".into(),
        ));
    }
    let Ok(port) = port.parse::<u16>() else {
        return Err(invalid(format!(
            "{port:?} is not a port number (0 to 65535): expected host:port"
        )));
    };
    if host.contains(':') || host.starts_with('[') {
        return Err(invalid(
            "an IPv6 host goes in brackets, such as [::1]:10258".into(),
        ));
    }
    let found = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| invalid(format!("cannot resolve {host}: {e}")))?;
    Ok(found.collect())
}

/// Serves the probes and `/metrics` on `listener` until `shutdown`
/// completes, then lets requests in flight finish.
pub async fn serve(
    daemon: Daemon,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /healthz, /livez, /readyz and /metrics");
    }
    axum::serve(listener, router(daemon))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The routes [`serve`] serves, for embedding in another server.
pub fn router(daemon: Daemon) -> Router {
    let mut router = Router::new();
    for probe in [Probe::Health, Probe::Live, Probe::Ready] {
        let name = probe_name(probe);
        router = router
            .route(
                &format!("/{name}"),
                get(
                    move |State(daemon): State<Daemon>, RawQuery(query): RawQuery| async move {
                        let options = ProbeOptions::from_query(query.as_deref());
                        let (status, body) = render_probe(&daemon, probe, &options);
                        text(status, TEXT_CONTENT_TYPE, body)
                    },
                ),
            )
            .route(
                &format!("/{name}/{{check}}"),
                get(
                    move |State(daemon): State<Daemon>,
                          Path(check): Path<String>,
                          RawQuery(query): RawQuery| async move {
                        let options = ProbeOptions::from_query(query.as_deref());
                        match render_check(&daemon, probe, &check, &options) {
                            Some((status, body)) => text(status, TEXT_CONTENT_TYPE, body),
                            None => unknown_check(&daemon, probe, &check),
                        }
                    },
                ),
            );
    }
    router
        .route(
            "/metrics",
            get(|State(daemon): State<Daemon>| async move {
                text(
                    StatusCode::OK,
                    METRICS_CONTENT_TYPE,
                    render_metrics(&daemon),
                )
            }),
        )
        .fallback(|| async {
            text(
                StatusCode::NOT_FOUND,
                TEXT_CONTENT_TYPE,
                "404 page not found: try /healthz, /livez, /readyz or /metrics\n".into(),
            )
        })
        .method_not_allowed_fallback(|| async {
            text(
                StatusCode::METHOD_NOT_ALLOWED,
                TEXT_CONTENT_TYPE,
                "405 method not allowed: use GET\n".into(),
            )
        })
        .with_state(daemon)
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

fn unknown_check(daemon: &Daemon, probe: Probe, check: &str) -> Response {
    let known: Vec<&str> = daemon.checks(probe).iter().map(|c| c.name).collect();
    text(
        StatusCode::NOT_FOUND,
        TEXT_CONTENT_TYPE,
        format!(
            "404 page not found: /{} has no check named {check:?}; its checks are {}\n",
            probe_name(probe),
            known.join(", ")
        ),
    )
}

/// The path, and the word in the last line, of a probe.
fn probe_name(probe: Probe) -> &'static str {
    match probe {
        Probe::Health => "healthz",
        Probe::Live => "livez",
        Probe::Ready => "readyz",
    }
}

/// How a probe was asked, from its query string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeOptions {
    /// `?verbose`, with any value or none: list every check.
    pub verbose: bool,
    /// `?exclude=name`, repeatable: checks to skip.
    pub exclude: Vec<String>,
}

impl ProbeOptions {
    /// Reads `verbose` and `exclude` from a raw query string (without `?`);
    /// other parameters are ignored.
    pub fn from_query(query: Option<&str>) -> Self {
        let mut options = ProbeOptions::default();
        for pair in query.unwrap_or("").split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "verbose" => options.verbose = true,
                "exclude" if !value.is_empty() => options.exclude.push(value.to_string()),
                _ => {}
            }
        }
        options
    }
}

/// A probe's answer: its status and `text/plain` body.
pub fn render_probe(daemon: &Daemon, probe: Probe, options: &ProbeOptions) -> (StatusCode, String) {
    render_checks(probe_name(probe), &daemon.checks(probe), options)
}

/// The answer for one check of a probe (`/healthz/pleg`), or `None` when
/// the probe has no check of that name. The last line names the check:
/// `pleg check failed`.
pub fn render_check(
    daemon: &Daemon,
    probe: Probe,
    name: &str,
    options: &ProbeOptions,
) -> Option<(StatusCode, String)> {
    let check = daemon.checks(probe).into_iter().find(|c| c.name == name)?;
    Some(render_checks(check.name, &[check], options))
}

fn render_checks(name: &str, checks: &[Check], options: &ProbeOptions) -> (StatusCode, String) {
    let mut every = String::new();
    let mut failing = String::new();
    for check in checks {
        if options.exclude.iter().any(|e| e == check.name) {
            let _ = writeln!(every, "[+]{} excluded: ok", check.name);
            continue;
        }
        // A reason spanning lines would break the one-line-per-check format.
        let line = check.line().replace(['\n', '\r'], " ");
        if !check.ok() {
            failing.push_str(&line);
            failing.push('\n');
        }
        every.push_str(&line);
        every.push('\n');
    }
    let unmatched: Vec<String> = options
        .exclude
        .iter()
        .filter(|e| !checks.iter().any(|c| c.name == e.as_str()))
        .map(|e| format!("{e:?}"))
        .collect();
    if !unmatched.is_empty() {
        let _ = writeln!(
            every,
            "warn: some health checks cannot be excluded: no matches for {}",
            unmatched.join(", ")
        );
    }
    if !failing.is_empty() {
        let mut body = if options.verbose { every } else { failing };
        let _ = writeln!(body, "{name} check failed");
        return (StatusCode::SERVICE_UNAVAILABLE, body);
    }
    if !options.verbose {
        return (StatusCode::OK, "ok".into());
    }
    let _ = writeln!(every, "{name} check passed");
    (StatusCode::OK, every)
}

/// Whether `prefix` can begin a Prometheus metric name
/// (`[a-zA-Z_:][a-zA-Z0-9_:]*`, or empty). [`render_metrics`] replaces the
/// characters of an invalid prefix with `_`, so a CLI should refuse one
/// up front.
pub fn metrics_prefix_is_valid(prefix: &str) -> bool {
    prefix.chars().enumerate().all(|(i, c)| name_char(i, c))
}

fn name_char(position: usize, c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (position > 0 && c.is_ascii_digit())
}

fn sanitize_prefix(prefix: &str) -> String {
    prefix
        .chars()
        .enumerate()
        .map(|(i, c)| if name_char(i, c) { c } else { '_' })
        .collect()
}

/// The Prometheus text exposition (format 0.0.4) of the daemon's figures,
/// every name prefixed with [`Daemon::metrics_prefix`]. Families, with the
/// kubelet's names (without its `kubelet_` prefix) where it has them:
///
/// | family | type | labels |
/// |---|---|---|
/// | `pleg_relist_duration_seconds` | histogram | |
/// | `pleg_relist_interval_seconds` | histogram | |
/// | `pleg_last_seen_seconds` | gauge | |
/// | `pleg_discard_events` | counter | |
/// | `evented_pleg_connection_success_count` | counter | |
/// | `evented_pleg_connection_error_count` | counter | |
/// | `evented_pleg_connection_latency_seconds` | histogram | |
/// | `running_pods` | gauge | |
/// | `running_containers` | gauge | `container_state` |
/// | `pleg_events_total` | counter | `type`, `source` |
/// | `pleg_events_published_total` | counter | |
/// | `pleg_relists_total` | counter | |
/// | `pleg_relist_failures_total` | counter | |
/// | `pleg_status_fetch_failures_total` | counter | |
/// | `pleg_cri_requests_total` | counter | `method`, `code` |
/// | `pleg_runtime_unknown_values_total` | counter | |
/// | `pleg_runtime_skipped_records_total` | counter | |
/// | `pleg_stream_events_received_total` | counter | |
/// | `pleg_stream_events_applied_total` | counter | |
/// | `pleg_stale_events_dropped_total` | counter | `reason` |
/// | `pleg_stream_unresolved_events_total` | counter | |
/// | `pleg_stream_gaps_total` | counter | |
/// | `pleg_stream_fallbacks_total` | counter | |
/// | `pleg_stream_promotions_total` | counter | |
/// | `pleg_mode` | gauge | `mode` |
/// | `pleg_stream_state` | gauge | `state` |
/// | `pleg_subscribers` | gauge | |
pub fn render_metrics(daemon: &Daemon) -> String {
    let pleg = &daemon.pleg;
    let stats = pleg.stats();
    let stream = pleg.stream_stats();
    let status = pleg.stream_status();
    let counts = pleg.runtime_counts();
    let runtime = pleg.runtime_stats();
    let hub = pleg.hub();
    let prefix = sanitize_prefix(&daemon.metrics_prefix);
    let mut m = Exposition {
        out: String::with_capacity(8 * 1024),
        prefix: &prefix,
    };

    // The kubelet's families.
    m.histogram(
        "pleg_relist_duration_seconds",
        "Duration in seconds for relisting pods in PLEG.",
        &stats.relist_duration,
    );
    m.histogram(
        "pleg_relist_interval_seconds",
        "Interval in seconds between relisting in PLEG.",
        &stats.relist_interval,
    );
    let last_seen = stats
        .last_seen
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    m.single(
        "pleg_last_seen_seconds",
        Kind::Gauge,
        "Timestamp in seconds when PLEG was last seen active: the start of the last relist whose listing succeeded (0 before the first).",
        last_seen,
    );
    m.single(
        "pleg_discard_events",
        Kind::Counter,
        "The number of discard events in PLEG: events that lagging subscribers missed.",
        hub.discarded(),
    );
    m.single(
        "evented_pleg_connection_success_count",
        Kind::Counter,
        "The number of times a streaming client was obtained to receive CRI Events.",
        stream.connection_successes,
    );
    m.single(
        "evented_pleg_connection_error_count",
        Kind::Counter,
        "The number of errors encountered during the establishment of streaming connection with the CRI runtime, and of streams that broke.",
        stream.connection_errors,
    );
    m.histogram(
        "evented_pleg_connection_latency_seconds",
        "The latency of streaming connection with the CRI runtime, measured in seconds: when an event was applied minus the runtime's time of it.",
        &stream.latency,
    );
    m.single(
        "running_pods",
        Kind::Gauge,
        "Number of pods that have a running pod sandbox, as of the last successful listing.",
        counts.running_pods as u64,
    );
    m.family(
        "running_containers",
        Kind::Gauge,
        "Number of containers (not sandboxes) by state, as of the last successful listing.",
    );
    for state in ContainerState::ALL {
        m.sample(
            "running_containers",
            &[("container_state", state.as_str())],
            counts.containers(state) as u64,
        );
    }

    // pleg's own.
    m.family(
        "pleg_events_total",
        Kind::Counter,
        "Pod lifecycle events published, by type and by where pleg learned of them.",
    );
    for kind in EventType::ALL {
        for source in [EventSource::Relist, EventSource::Stream] {
            let value = stats
                .events_by_source
                .get(kind.index())
                .and_then(|by_source| by_source.get(source_index(source)))
                .copied()
                .unwrap_or(0);
            m.sample(
                "pleg_events_total",
                &[("type", kind.as_str()), ("source", source.as_str())],
                value,
            );
        }
    }
    m.single(
        "pleg_events_published_total",
        Kind::Counter,
        "Events handed to the subscriber hub, before filtering.",
        hub.published(),
    );
    m.single(
        "pleg_relists_total",
        Kind::Counter,
        "Relists whose listing succeeded.",
        stats.relists,
    );
    m.single(
        "pleg_relist_failures_total",
        Kind::Counter,
        "Relists whose listing failed.",
        stats.relist_failures,
    );
    m.single(
        "pleg_status_fetch_failures_total",
        Kind::Counter,
        "Pod status fetches that failed.",
        stats.status_failures,
    );
    m.family(
        "pleg_cri_requests_total",
        Kind::Counter,
        "Runtime calls that ended, by method and outcome (a gRPC code such as OK, or Timeout).",
    );
    for ((method, code), value) in runtime.outcomes() {
        m.sample(
            "pleg_cri_requests_total",
            &[("method", method), ("code", code)],
            value,
        );
    }
    m.single(
        "pleg_runtime_unknown_values_total",
        Kind::Counter,
        "State values from the runtime outside the CRI enums, treated as unknown.",
        runtime.unknown_values(),
    );
    m.single(
        "pleg_runtime_skipped_records_total",
        Kind::Counter,
        "Records from the runtime that could not be used and were left out.",
        runtime.skipped_records(),
    );
    m.single(
        "pleg_stream_events_received_total",
        Kind::Counter,
        "Container events received from the runtime's event stream.",
        stream.events_received,
    );
    m.single(
        "pleg_stream_events_applied_total",
        Kind::Counter,
        "Container events from the stream applied to the records and the cache.",
        stream.events_applied,
    );
    m.family(
        "pleg_stale_events_dropped_total",
        Kind::Counter,
        "Container events from the stream dropped as stale, by reason.",
    );
    for (i, reason) in StaleReason::ALL.into_iter().enumerate() {
        let value = stream.stale_dropped.get(i).copied().unwrap_or(0);
        m.sample(
            "pleg_stale_events_dropped_total",
            &[("reason", reason.as_str())],
            value,
        );
    }
    m.single(
        "pleg_stream_unresolved_events_total",
        Kind::Counter,
        "Container events from the stream whose pod could not be resolved.",
        stream.unresolved,
    );
    m.single(
        "pleg_stream_gaps_total",
        Kind::Counter,
        "Container events showing that the stream lost earlier ones (each asks for a relist).",
        stream.gaps,
    );
    m.single(
        "pleg_stream_fallbacks_total",
        Kind::Counter,
        "Falls back from the event stream to relisting at the generic period.",
        stream.fallbacks,
    );
    m.single(
        "pleg_stream_promotions_total",
        Kind::Counter,
        "Returns to the event stream after a fallback.",
        stream.promotions,
    );
    m.family(
        "pleg_mode",
        Kind::Gauge,
        "Which generator is in charge: 1 for the current mode, 0 for the other.",
    );
    for mode in [Mode::Evented, Mode::Generic] {
        m.sample(
            "pleg_mode",
            &[("mode", mode.as_str())],
            u64::from(mode == status.mode),
        );
    }
    m.family(
        "pleg_stream_state",
        Kind::Gauge,
        "State of the event stream: 1 for the current state, 0 for the others.",
    );
    for state in STREAM_STATES {
        m.sample(
            "pleg_stream_state",
            &[("state", state.as_str())],
            u64::from(state == status.state),
        );
    }
    m.single(
        "pleg_subscribers",
        Kind::Gauge,
        "Live subscriptions.",
        hub.subscriber_count() as u64,
    );
    m.out
}

const STREAM_STATES: [StreamState; 5] = [
    StreamState::Stopped,
    StreamState::Connecting,
    StreamState::Streaming,
    StreamState::Backoff,
    StreamState::Fallback,
];

/// The position of a stream state in [`STREAM_STATES`]; the exhaustive match
/// makes a new state a compile error here rather than a missing series.
#[cfg(test)]
fn stream_state_index(state: StreamState) -> usize {
    match state {
        StreamState::Stopped => 0,
        StreamState::Connecting => 1,
        StreamState::Streaming => 2,
        StreamState::Backoff => 3,
        StreamState::Fallback => 4,
    }
}

/// Where a source sits in [`crate::generic::StatsSnapshot::events_by_source`].
fn source_index(source: EventSource) -> usize {
    match source {
        EventSource::Relist => 0,
        EventSource::Stream => 1,
    }
}

/// A metric family's type.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample value: counts print as integers (exact past 2^53), the rest as
/// floats Prometheus parses.
#[derive(Clone, Copy)]
enum Value {
    Count(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Count(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Count(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{}", PromFloat(v)),
        }
    }
}

/// A float as the exposition format spells it: `+Inf`, `-Inf`, `NaN`, and
/// otherwise Rust's shortest round-trip decimal (never an exponent).
struct PromFloat(f64);

impl fmt::Display for PromFloat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("NaN")
        } else if v == f64::INFINITY {
            f.write_str("+Inf")
        } else if v == f64::NEG_INFINITY {
            f.write_str("-Inf")
        } else {
            write!(f, "{v}")
        }
    }
}

/// Escapes a label value: backslash, double quote and newline.
struct LabelValue<'a>(&'a str);

impl fmt::Display for LabelValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Escapes HELP text: backslash and newline.
struct HelpText<'a>(&'a str);

impl fmt::Display for HelpText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Text exposition being written. Writing to a `String` cannot fail, so the
/// `fmt::Result`s are dropped.
struct Exposition<'a> {
    out: String,
    prefix: &'a str,
}

impl Exposition<'_> {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let prefix = self.prefix;
        let _ = writeln!(self.out, "# HELP {prefix}{name} {}", HelpText(help));
        let _ = writeln!(self.out, "# TYPE {prefix}{name} {}", kind.as_str());
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<Value>) {
        let _ = write!(self.out, "{}{name}", self.prefix);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", LabelValue(value));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", value.into());
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl Into<Value>) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn histogram(&mut self, name: &str, help: &str, snapshot: &HistogramSnapshot) {
        self.family(name, Kind::Histogram, help);
        let bucket = format!("{name}_bucket");
        for &(bound, count) in &snapshot.buckets {
            let le = PromFloat(bound).to_string();
            self.sample(&bucket, &[("le", &le)], count);
        }
        self.sample(&bucket, &[("le", "+Inf")], snapshot.count);
        self.sample(&format!("{name}_sum"), &[], snapshot.sum);
        self.sample(&format!("{name}_count"), &[], snapshot.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &'static str, failure: Option<&str>) -> Check {
        Check {
            name,
            failure: failure.map(str::to_string),
            detail: String::new(),
        }
    }

    #[test]
    fn floats_print_so_prometheus_parses_them() {
        let cases = [
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
            (0.005, "0.005"),
            (1.0, "1"),
            (2.5, "2.5"),
            (1e-7, "0.0000001"),
            (0.0, "0"),
        ];
        for (v, want) in cases {
            assert_eq!(PromFloat(v).to_string(), want);
        }
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(LabelValue("a\\b\"c\nd").to_string(), r#"a\\b\"c\nd"#);
        assert_eq!(HelpText("a\\b\"c\nd").to_string(), r#"a\\b"c\nd"#);
    }

    #[test]
    fn histograms_end_with_inf_equal_to_the_count() {
        let mut m = Exposition {
            out: String::new(),
            prefix: "kubelet_",
        };
        m.histogram(
            "x_seconds",
            "X.",
            &HistogramSnapshot {
                buckets: vec![(0.1, 1), (1.0, 2)],
                count: 3,
                sum: 12.5,
            },
        );
        assert_eq!(
            m.out,
            "# HELP kubelet_x_seconds X.\n\
             # TYPE kubelet_x_seconds histogram\n\
             kubelet_x_seconds_bucket{le=\"0.1\"} 1\n\
             kubelet_x_seconds_bucket{le=\"1\"} 2\n\
             kubelet_x_seconds_bucket{le=\"+Inf\"} 3\n\
             kubelet_x_seconds_sum 12.5\n\
             kubelet_x_seconds_count 3\n"
        );
    }

    #[test]
    fn query_strings_set_verbose_with_any_value_and_collect_exclusions() {
        for query in [
            "verbose",
            "verbose=",
            "verbose=true",
            "verbose=1",
            "x=y&verbose",
        ] {
            assert!(ProbeOptions::from_query(Some(query)).verbose, "{query}");
        }
        assert!(!ProbeOptions::from_query(None).verbose);
        assert!(!ProbeOptions::from_query(Some("verbosity=1")).verbose);
        assert_eq!(
            ProbeOptions::from_query(Some("exclude=stream&exclude=runtime")).exclude,
            ["stream", "runtime"]
        );
    }

    #[test]
    fn a_failing_check_gives_its_line_and_the_probe_verdict() {
        let checks = [
            check(
                "pleg",
                Some("pleg was last seen active 3m5s ago; threshold is 3m0s"),
            ),
            check("runtime", None),
        ];
        let (status, body) = render_checks("healthz", &checks, &ProbeOptions::default());
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "[-]pleg failed: pleg was last seen active 3m5s ago; threshold is 3m0s\nhealthz check failed\n"
        );
        let verbose = ProbeOptions {
            verbose: true,
            ..ProbeOptions::default()
        };
        let (_, body) = render_checks("healthz", &checks, &verbose);
        assert_eq!(
            body,
            "[-]pleg failed: pleg was last seen active 3m5s ago; threshold is 3m0s\n[+]runtime ok\nhealthz check failed\n"
        );
    }

    #[test]
    fn passing_checks_say_ok_or_list_themselves_when_verbose() {
        let checks = [check("pleg", None), check("runtime", None)];
        assert_eq!(
            render_checks("readyz", &checks, &ProbeOptions::default()),
            (StatusCode::OK, "ok".to_string())
        );
        let verbose = ProbeOptions {
            verbose: true,
            ..ProbeOptions::default()
        };
        assert_eq!(
            render_checks("readyz", &checks, &verbose).1,
            "[+]pleg ok\n[+]runtime ok\nreadyz check passed\n"
        );
    }

    #[test]
    fn excluded_checks_pass_and_unknown_exclusions_are_reported() {
        let checks = [check("pleg", None), check("runtime", Some("down\nreally"))];
        let options = ProbeOptions {
            verbose: true,
            exclude: vec!["runtime".into(), "nope".into()],
        };
        assert_eq!(
            render_checks("healthz", &checks, &options),
            (
                StatusCode::OK,
                "[+]pleg ok\n[+]runtime excluded: ok\nwarn: some health checks cannot be excluded: no matches for \"nope\"\nhealthz check passed\n"
                    .to_string()
            )
        );
        // A reason spanning lines stays on one line.
        let (_, body) = render_checks("healthz", &checks, &ProbeOptions::default());
        assert_eq!(
            body,
            "[-]runtime failed: down really\nhealthz check failed\n"
        );
    }

    #[test]
    fn prefixes_are_checked_and_invalid_characters_replaced() {
        assert!(metrics_prefix_is_valid(""));
        assert!(metrics_prefix_is_valid("kubelet_"));
        assert!(metrics_prefix_is_valid("node:pleg_2_"));
        assert!(!metrics_prefix_is_valid("2pleg_"));
        assert!(!metrics_prefix_is_valid("my-pleg."));
        assert_eq!(sanitize_prefix("my-pleg."), "my_pleg_");
        assert_eq!(sanitize_prefix("2x"), "_x");
    }

    #[test]
    fn every_stream_state_has_a_series() {
        for (i, state) in STREAM_STATES.into_iter().enumerate() {
            assert_eq!(stream_state_index(state), i);
        }
    }
}
