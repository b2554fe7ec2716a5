//! The Prometheus text exposition (format 0.0.4) of the daemon's figures:
//! the families, their names (the kubelet's where it has them) and the
//! writing of samples, histograms, label values and help text.

use std::fmt::{self, Write as _};
use std::time::UNIX_EPOCH;

use crate::event::{EventSource, EventType};
use crate::evented::{Mode, StreamState};
use crate::generic::StaleReason;
use crate::metrics::HistogramSnapshot;
use crate::model::ContainerState;
use crate::server::Daemon;

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
