//! The daemon's HTTP side over real sockets: kubelet-style probes as a
//! runtime stalls and recovers, `/metrics` parsed as Prometheus text and
//! moving with activity, the metrics prefix, unknown paths and methods, and
//! binding errors. The HTTP/1.1 client is the test kit's; the exposition
//! parser lives here. Every wait is bounded.

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::pod;
use pleg::model::{Container, ContainerState, Pod, PodMeta};
use pleg::runtime::fake::FakeRuntime;
use pleg::runtime::{ContainerEvent, ContainerEventKind, CriMethod, RpcOutcome, SandboxSnapshot};
use pleg::server::http::{self, BindError, ProbeOptions};
use pleg::server::{Daemon, Probe};
use pleg::{Config, Pleg, RelistDuration};
use pleg_testkit::http::{self as http_client, Reply};
use pleg_testkit::wait::eventually_async;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use ContainerState::*;

const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// A server over a fake runtime.

struct Server {
    runtime: Arc<FakeRuntime>,
    daemon: Daemon,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

/// Relisting only, every 20 ms, unhealthy after 300 ms without a successful
/// listing.
fn relisting() -> Config {
    Config::generic().with_relist(RelistDuration {
        relist_period: Duration::from_millis(20),
        relist_threshold: Duration::from_millis(300),
    })
}

/// A pod `uid` with a ready sandbox `sb-<uid>` and these containers.
fn pod_with_sandbox(uid: &str, containers: &[(&str, ContainerState)]) -> Pod {
    let mut p = pod(uid, containers);
    p.sandboxes.push(Container::new(
        format!("sb-{uid}"),
        format!("{uid}-name"),
        Running,
    ));
    p
}

/// Serves a generator over a fake runtime with `pods`; `start` starts the
/// generator too.
async fn server(config: Config, prefix: &str, pods: Vec<Pod>, start: bool) -> Server {
    let runtime = FakeRuntime::with_pods(pods);
    let pleg = Pleg::new(runtime.clone(), config).expect("valid config");
    if start {
        pleg.start().expect("start");
    }
    let daemon = Daemon::new(pleg, "unix:///fake", prefix);
    let listener = http::bind("127.0.0.1:0").await.expect("bind a free port");
    let addr = listener.local_addr().expect("local address");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(http::serve(daemon.clone(), listener, async {
        let _ = stopped.await;
    }));
    Server {
        runtime,
        daemon,
        addr,
        stop: Some(stop),
        task,
    }
}

impl Server {
    async fn get(&self, path: &str) -> Reply {
        request(self.addr, "GET", path).await
    }

    /// Parsed `/metrics`, after checking the response's headers.
    async fn metrics(&self) -> Metrics {
        let reply = self.get("/metrics").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        parse_exposition(&reply.body)
    }

    /// Stops the server (it must return promptly and cleanly) and the
    /// generator.
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("the server stops within 5 s of the shutdown signal")
            .expect("the server task does not panic");
        assert!(served.is_ok(), "serve ended with {served:?}");
        self.daemon.pleg.stop().await;
        assert!(
            TcpStream::connect(self.addr).await.is_err(),
            "nothing listens after shutdown"
        );
    }
}

// ---------------------------------------------------------------------------
// HTTP, through the test kit's client.

/// `method path`; any failure to get a whole answer fails the test.
async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    http_client::request(addr, method, path)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The headers every text answer carries.
fn assert_text(reply: &Reply) {
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8"),
        "{reply:?}"
    );
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
}

// ---------------------------------------------------------------------------
// A Prometheus text-format (0.0.4) parser, strict about what we emit.

#[derive(Debug, Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
}

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug)]
struct Metrics {
    families: BTreeMap<String, Family>,
    samples: Vec<Sample>,
}

impl Metrics {
    /// The value of the sample with exactly these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }

    fn kind(&self, family: &str) -> Option<&str> {
        self.families.get(family).and_then(|f| f.kind.as_deref())
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().enumerate().all(|(i, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
        })
}

fn parse_value(text: &str) -> f64 {
    match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => {
            assert!(
                text.chars()
                    .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')),
                "value {text:?} is not a float Prometheus reads"
            );
            text.parse()
                .unwrap_or_else(|e| panic!("value {text:?}: {e}"))
        }
    }
}

/// Parses `{a="x",b="y"}` (escapes undone); returns the labels and the rest
/// of the line.
fn parse_labels(line: &str) -> (BTreeMap<String, String>, &str) {
    let mut labels = BTreeMap::new();
    let mut rest = line;
    loop {
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label without =\" in {line:?}"));
        assert!(valid_name(name), "label name {name:?} in {line:?}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, '\n')) => panic!("raw newline in a label value"),
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        assert!(
            labels.insert(name.to_string(), value).is_none(),
            "repeated label {name} in {line:?}"
        );
        rest = &after[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if let Some(r) = rest.strip_prefix('}') {
            return (labels, r);
        } else {
            panic!("expected , or }} after a label in {line:?}");
        }
    }
}

/// Parses and validates an exposition: every sample line is
/// `name{labels} value`, every family has HELP and TYPE before its samples,
/// and histogram buckets are cumulative and end with `+Inf` equal to
/// `_count`.
fn parse_exposition(text: &str) -> Metrics {
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(valid_name(name), "HELP name {name:?}");
            let family = families.entry(name.to_string()).or_default();
            assert!(family.help.is_none(), "second HELP for {name}");
            family.help = Some(help.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                matches!(
                    kind,
                    "counter" | "gauge" | "histogram" | "summary" | "untyped"
                ),
                "TYPE {kind:?}"
            );
            let family = families.entry(name.to_string()).or_default();
            assert!(family.kind.is_none(), "second TYPE for {name}");
            family.kind = Some(kind.to_string());
        } else if line.starts_with('#') {
            continue;
        } else {
            assert!(!line.trim().is_empty(), "empty line in the exposition");
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            assert!(valid_name(name), "sample name {name:?} in {line:?}");
            let (labels, rest) = match line[name_end..].strip_prefix('{') {
                Some(after) => parse_labels(after),
                None => (BTreeMap::new(), &line[name_end..]),
            };
            let value = rest
                .strip_prefix(' ')
                .unwrap_or_else(|| panic!("no space before the value in {line:?}"));
            let mut fields = value.split(' ');
            let value = parse_value(fields.next().unwrap_or_default());
            if let Some(timestamp) = fields.next() {
                timestamp
                    .parse::<i64>()
                    .unwrap_or_else(|_| panic!("bad timestamp in {line:?}"));
            }
            assert!(fields.next().is_none(), "trailing fields in {line:?}");
            let family = family_of(&families, name);
            let declared = families.get(&family);
            assert!(
                declared.is_some_and(|f| f.help.is_some() && f.kind.is_some()),
                "sample {name} before the HELP and TYPE of {family}"
            );
            samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
    }
    for (name, family) in &families {
        assert!(family.help.is_some(), "{name} has no HELP");
        assert!(family.kind.is_some(), "{name} has no TYPE");
    }
    let metrics = Metrics { families, samples };
    check_histograms(&metrics);
    metrics
}

/// The family a sample belongs to: its own name, or a histogram's name
/// without `_bucket`, `_sum` or `_count`.
fn family_of(families: &BTreeMap<String, Family>, sample: &str) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = sample.strip_suffix(suffix)
            && families
                .get(base)
                .is_some_and(|f| f.kind.as_deref() == Some("histogram"))
        {
            return base.to_string();
        }
    }
    sample.to_string()
}

/// A bucket's upper bound and count.
type Bucket = (f64, f64);

fn check_histograms(metrics: &Metrics) {
    for (name, family) in &metrics.families {
        if family.kind.as_deref() != Some("histogram") {
            continue;
        }
        // One series per label set (without `le`): a labelled histogram,
        // such as one per runtime operation, has several.
        let mut series: BTreeMap<Vec<(&str, &str)>, Vec<Bucket>> = BTreeMap::new();
        for s in metrics
            .samples
            .iter()
            .filter(|s| s.name == format!("{name}_bucket"))
        {
            let le = s.labels.get("le").expect("a bucket has le");
            let labels: Vec<(&str, &str)> = s
                .labels
                .iter()
                .filter(|(k, _)| k.as_str() != "le")
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            series
                .entry(labels)
                .or_default()
                .push((parse_value(le), s.value));
        }
        assert!(!series.is_empty(), "{name} has no buckets");
        for (labels, buckets) in &series {
            assert!(!buckets.is_empty(), "{name} has no buckets");
            for pair in buckets.windows(2) {
                assert!(
                    pair[0].0 < pair[1].0,
                    "{name}{labels:?}: le not ascending: {buckets:?}"
                );
                assert!(
                    pair[0].1 <= pair[1].1,
                    "{name}{labels:?}: buckets not cumulative: {buckets:?}"
                );
            }
            let (last_le, last_count) = buckets[buckets.len() - 1];
            assert_eq!(
                last_le,
                f64::INFINITY,
                "{name}{labels:?}: the last bucket is +Inf"
            );
            assert_eq!(
                Some(last_count),
                metrics.value(&format!("{name}_count"), labels),
                "{name}{labels:?}: +Inf bucket equals _count"
            );
            assert!(
                metrics.value(&format!("{name}_sum"), labels).is_some(),
                "{name}{labels:?}_sum"
            );
        }
    }
}

/// Every family `render_metrics` promises, with its type.
const FAMILIES: [(&str, &str); 46] = [
    ("pleg_relist_duration_seconds", "histogram"),
    ("pleg_relist_interval_seconds", "histogram"),
    ("pleg_last_seen_seconds", "gauge"),
    ("pleg_discard_events", "counter"),
    ("evented_pleg_connection_success_count", "counter"),
    ("evented_pleg_connection_error_count", "counter"),
    ("evented_pleg_connection_latency_seconds", "histogram"),
    ("pleg_stream_delivery_seconds", "histogram"),
    ("pleg_stream_apply_seconds", "histogram"),
    ("running_pods", "gauge"),
    ("running_containers", "gauge"),
    ("pleg_events_total", "counter"),
    ("pleg_events_published_total", "counter"),
    ("pleg_relists_total", "counter"),
    ("pleg_relist_failures_total", "counter"),
    ("pleg_status_fetch_failures_total", "counter"),
    ("pleg_cri_requests_total", "counter"),
    ("pleg_cri_request_duration_seconds", "histogram"),
    ("pleg_runtime_unknown_values_total", "counter"),
    ("pleg_runtime_skipped_records_total", "counter"),
    ("pleg_stream_events_received_total", "counter"),
    ("pleg_stream_events_applied_total", "counter"),
    ("pleg_stale_events_dropped_total", "counter"),
    ("pleg_stream_unresolved_events_total", "counter"),
    ("pleg_stream_gaps_total", "counter"),
    ("pleg_stream_fallbacks_total", "counter"),
    ("pleg_stream_promotions_total", "counter"),
    ("pleg_mode", "gauge"),
    ("pleg_stream_state", "gauge"),
    ("pleg_subscribers", "gauge"),
    ("pleg_pod_relist_duration_seconds", "histogram"),
    ("terminated_containers_total", "counter"),
    ("pleg_runtime_operations_total", "counter"),
    ("pleg_runtime_operation_duration_seconds", "histogram"),
    ("pleg_pods_status_failing", "gauge"),
    ("pleg_clock_steps_total", "counter"),
    ("pleg_stream_buffer_overflows_total", "counter"),
    ("pleg_runtime_probe_failures_total", "counter"),
    ("pleg_replay_ring_items", "gauge"),
    ("pleg_watch_resumes_total", "counter"),
    ("pleg_watch_replayed_items_total", "counter"),
    // The daemon's own.
    ("pleg_log_lines_dropped_total", "counter"),
    ("pleg_http_connections_open", "gauge"),
    ("pleg_http_connections_shed_total", "counter"),
    ("pleg_grpc_connections_refused_total", "counter"),
    ("pleg_tokio_alive_tasks", "gauge"),
];

// ---------------------------------------------------------------------------
// Probes.

#[tokio::test]
async fn healthz_fails_kubelet_style_when_the_runtime_stalls_past_the_threshold_and_recovers() {
    let s = server(
        relisting(),
        "",
        vec![pod_with_sandbox("p1", &[("c1", Running)])],
        true,
    )
    .await;
    let ok = eventually_async("a healthy /healthz", WAIT, || async {
        let reply = s.get("/healthz").await;
        (reply.status == 200).then_some(reply)
    })
    .await;
    assert_eq!(ok.body, "ok");
    assert_text(&ok);

    s.runtime
        .set_list_failure(Some("connection refused".into()));
    let failed = eventually_async("a stale pleg check", WAIT, || async {
        let reply = s.get("/healthz").await;
        reply.body.contains("[-]pleg failed").then_some(reply)
    })
    .await;
    assert_eq!(failed.status, 503);
    assert_text(&failed);
    let lines: Vec<&str> = failed.body.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"healthz check failed"),
        "{}",
        failed.body
    );
    assert!(failed.body.ends_with("healthz check failed\n"));
    let failing = &lines[..lines.len() - 1];
    assert!(failing.iter().all(|l| l.starts_with("[-]")), "{failing:?}");
    let pleg_line = failing
        .iter()
        .find(|l| l.starts_with("[-]pleg failed: "))
        .expect("the pleg line");
    assert!(
        pleg_line.starts_with("[-]pleg failed: pleg was last seen active ")
            && pleg_line.ends_with(" ago; threshold is 300ms"),
        "{pleg_line}"
    );
    let runtime_line = failing
        .iter()
        .find(|l| l.starts_with("[-]runtime failed: "))
        .expect("the runtime line, with the listing's error");
    assert!(
        runtime_line.contains("connection refused"),
        "{runtime_line}"
    );
    assert!(
        !failed.body.contains("[+]"),
        "passing checks stay out of the short form"
    );

    // Readiness fails with it; liveness does not, since the loop runs.
    let ready = s.get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.body.ends_with("readyz check failed\n"),
        "{}",
        ready.body
    );
    let live = s.get("/livez").await;
    assert_eq!((live.status, live.body.as_str()), (200, "ok"));

    s.runtime.set_list_failure(None);
    let recovered = eventually_async("a healthy /healthz again", WAIT, || async {
        let reply = s.get("/healthz").await;
        (reply.status == 200).then_some(reply)
    })
    .await;
    assert_eq!(recovered.body, "ok");
    assert_eq!(s.get("/readyz").await.status, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn verbose_lists_every_check_then_the_verdict() {
    let s = server(relisting(), "", vec![], true).await;
    eventually_async("a healthy /healthz", WAIT, || async {
        (s.get("/healthz").await.status == 200).then_some(())
    })
    .await;
    for path in [
        "/healthz?verbose",
        "/healthz?verbose=",
        "/healthz?verbose=true",
        "/healthz?x=1&verbose",
    ] {
        let reply = s.get(path).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_text(&reply);
        assert_eq!(
            reply.body,
            "[+]pleg ok\n[+]runtime ok\n[+]stream ok\n[+]pods ok\nhealthz check passed\n",
            "{path}"
        );
    }
    assert_eq!(
        s.get("/readyz?verbose").await.body,
        "[+]pleg ok\n[+]runtime ok\nreadyz check passed\n"
    );
    assert_eq!(
        s.get("/livez?verbose").await.body,
        "[+]generator ok\nlivez check passed\n"
    );
    assert_eq!(
        s.get("/healthz?verbose&exclude=stream").await.body,
        "[+]pleg ok\n[+]runtime ok\n[+]stream excluded: ok\n[+]pods ok\nhealthz check passed\n"
    );

    // A failing check in verbose form: every check, then the verdict.
    s.runtime.set_list_failure(Some("runtime gone".into()));
    let reply = eventually_async("a failing runtime check", WAIT, || async {
        let reply = s.get("/healthz?verbose").await;
        (reply.status == 503).then_some(reply)
    })
    .await;
    let lines: Vec<&str> = reply.body.lines().collect();
    assert_eq!(lines.len(), 5, "{}", reply.body);
    assert!(lines[0].starts_with("[+]pleg ok") || lines[0].starts_with("[-]pleg failed: "));
    assert!(lines[1].starts_with("[-]runtime failed: ") && lines[1].contains("runtime gone"));
    assert_eq!(lines[2], "[+]stream ok");
    assert_eq!(lines[3], "[+]pods ok");
    assert_eq!(lines[4], "healthz check failed");

    // A stopped generator is not live.
    s.daemon.pleg.stop().await;
    let live = s.get("/livez").await;
    assert_eq!(live.status, 503);
    assert_eq!(
        live.body,
        "[-]generator failed: the relisting loop is not running\nlivez check failed\n"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn single_checks_answer_alone_and_unknown_names_are_not_found() {
    let s = server(relisting(), "", vec![], true).await;
    eventually_async("a healthy /healthz/pleg", WAIT, || async {
        (s.get("/healthz/pleg").await.status == 200).then_some(())
    })
    .await;
    let reply = s.get("/healthz/pleg").await;
    assert_eq!(reply.body, "ok");
    assert_text(&reply);
    assert_eq!(
        s.get("/healthz/pleg?verbose").await.body,
        "[+]pleg ok\npleg check passed\n"
    );
    assert_eq!(s.get("/livez/generator").await.status, 200);
    assert_eq!(s.get("/readyz/runtime").await.status, 200);

    for path in ["/healthz/nope", "/readyz/stream", "/livez/pleg"] {
        let reply = s.get(path).await;
        assert_eq!(reply.status, 404, "{path}");
        assert_text(&reply);
        assert!(
            reply.body.contains("no check named"),
            "{path}: {}",
            reply.body
        );
    }

    s.runtime.set_list_failure(Some("runtime gone".into()));
    let failed = eventually_async("a failing runtime check", WAIT, || async {
        let reply = s.get("/healthz/runtime").await;
        (reply.status == 503).then_some(reply)
    })
    .await;
    let lines: Vec<&str> = failed.body.lines().collect();
    assert_eq!(lines.len(), 2, "{}", failed.body);
    assert!(lines[0].starts_with("[-]runtime failed: "));
    assert_eq!(lines[1], "runtime check failed");
    assert_eq!(s.get("/healthz/stream").await.status, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn unknown_paths_are_not_found_and_other_methods_not_allowed() {
    let s = server(relisting(), "", vec![], false).await;
    for path in ["/", "/nope", "/healthz/", "/metrics/x", "/healthz/pleg/x"] {
        let reply = s.get(path).await;
        assert_eq!(reply.status, 404, "{path}");
        assert_text(&reply);
        assert!(
            reply.body.starts_with("404 page not found"),
            "{path}: {}",
            reply.body
        );
    }
    for (method, path) in [
        ("POST", "/healthz"),
        ("PUT", "/metrics"),
        ("DELETE", "/readyz"),
        ("POST", "/healthz/pleg"),
    ] {
        let reply = request(s.addr, method, path).await;
        assert_eq!(reply.status, 405, "{method} {path}");
        assert_text(&reply);
        assert!(
            reply.body.starts_with("405 method not allowed"),
            "{}",
            reply.body
        );
        assert!(
            reply.header("allow").is_some_and(|a| a.contains("GET")),
            "{method} {path}: {:?}",
            reply.headers
        );
    }
    let head = request(s.addr, "HEAD", "/healthz").await;
    assert_eq!(head.status, 503, "HEAD answers like GET (never relisted)");
    assert!(head.body.is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn a_generator_that_never_relisted_is_not_ready() {
    let s = server(relisting(), "", vec![], false).await;
    let (status, body) = http::render_probe(&s.daemon, Probe::Ready, &ProbeOptions::default());
    assert_eq!(status.as_u16(), 503);
    assert_eq!(
        body,
        "[-]pleg failed: pleg has yet to be successful\nreadyz check failed\n"
    );
    let reply = s.get("/readyz").await;
    assert_eq!((reply.status, reply.body.as_str()), (503, body.as_str()));
    s.shutdown().await;
}

// ---------------------------------------------------------------------------
// Metrics.

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_carry_every_family() {
    let s = server(relisting(), "", vec![], false).await;
    // Outcomes as a CRI runtime counts them. Label escaping is now tested in
    // src/metrics.rs (`free_text_label_values_are_escaped`).
    let stats = s.daemon.pleg.runtime_stats();
    stats.count_request(CriMethod::ListContainers, RpcOutcome::Code(tonic::Code::Ok));
    stats.count_request(CriMethod::ListContainers, RpcOutcome::Code(tonic::Code::Ok));
    stats.count_request(
        CriMethod::ContainerStatus,
        RpcOutcome::Code(tonic::Code::NotFound),
    );

    let m = s.metrics().await;
    for (family, kind) in FAMILIES {
        assert_eq!(m.kind(family), Some(kind), "family {family}");
    }
    assert_eq!(m.families.len(), FAMILIES.len(), "{:?}", m.families.keys());
    for kind in [
        "ContainerStarted",
        "ContainerDied",
        "ContainerRemoved",
        "PodSync",
        "ContainerChanged",
        "ConditionMet",
    ] {
        for source in ["relist", "stream"] {
            assert_eq!(
                m.get("pleg_events_total", &[("type", kind), ("source", source)]),
                0.0
            );
        }
    }
    for state in ["created", "running", "exited", "unknown"] {
        assert_eq!(
            m.get("running_containers", &[("container_state", state)]),
            0.0
        );
    }
    for reason in [
        "before_listing",
        "older_than_cache",
        "created_after_start",
        "started_after_finish",
        "already_removed",
    ] {
        assert_eq!(
            m.get("pleg_stale_events_dropped_total", &[("reason", reason)]),
            0.0
        );
    }
    assert_eq!(
        m.get(
            "pleg_cri_requests_total",
            &[("method", "ListContainers"), ("code", "OK")]
        ),
        2.0
    );
    assert_eq!(
        m.get(
            "pleg_cri_requests_total",
            &[("method", "ContainerStatus"), ("code", "NotFound")]
        ),
        1.0
    );
    // Not started: generic mode, stream stopped, never seen.
    assert_eq!(m.get("pleg_mode", &[("mode", "generic")]), 1.0);
    assert_eq!(m.get("pleg_mode", &[("mode", "evented")]), 0.0);
    assert_eq!(m.get("pleg_stream_state", &[("state", "stopped")]), 1.0);
    let states = ["connecting", "streaming", "backoff", "fallback"];
    for state in states {
        assert_eq!(m.get("pleg_stream_state", &[("state", state)]), 0.0);
    }
    assert_eq!(m.get("pleg_last_seen_seconds", &[]), 0.0);
    // Read at scrape time: at least the server's own task is alive.
    assert!(m.get("pleg_tokio_alive_tasks", &[]) >= 1.0);
    assert_eq!(m.get("pleg_relist_duration_seconds_count", &[]), 0.0);
    assert_eq!(
        m.get("pleg_relist_duration_seconds_bucket", &[("le", "+Inf")]),
        0.0
    );
    assert!(
        m.value("pleg_relist_duration_seconds_bucket", &[("le", "0.005")])
            .is_some()
    );
    s.shutdown().await;
}

#[tokio::test]
async fn metrics_move_with_relists_events_and_subscribers() {
    let s = server(relisting(), "", vec![], true).await;
    let before = eventually_async("a first relist", WAIT, || async {
        let m = s.metrics().await;
        (m.get("pleg_relists_total", &[]) >= 1.0).then_some(m)
    })
    .await;
    assert_eq!(before.get("pleg_subscribers", &[]), 0.0);
    let _subscription = s.daemon.pleg.subscribe();

    s.runtime.set_pods(vec![pod_with_sandbox(
        "p1",
        &[("c1", Running), ("c2", Exited)],
    )]);
    let started = [("type", "ContainerStarted"), ("source", "relist")];
    let after = eventually_async("the pod's events in /metrics", WAIT, || async {
        let m = s.metrics().await;
        (m.get("pleg_events_total", &started) >= 2.0).then_some(m)
    })
    .await;
    assert_eq!(
        after.get("pleg_events_total", &started),
        2.0,
        "sandbox and c1"
    );
    assert_eq!(
        after.get(
            "pleg_events_total",
            &[("type", "ContainerDied"), ("source", "relist")]
        ),
        1.0,
        "c2, first seen exited"
    );
    assert!(after.get("pleg_events_published_total", &[]) >= 3.0);
    assert!(after.get("pleg_relists_total", &[]) > before.get("pleg_relists_total", &[]));
    assert!(
        after.get("pleg_relist_duration_seconds_count", &[])
            > before.get("pleg_relist_duration_seconds_count", &[])
    );
    assert!(after.get("pleg_relist_interval_seconds_count", &[]) >= 1.0);
    assert_eq!(after.get("running_pods", &[]), 1.0);
    assert_eq!(
        after.get("running_containers", &[("container_state", "running")]),
        1.0
    );
    assert_eq!(
        after.get("running_containers", &[("container_state", "exited")]),
        1.0
    );
    assert_eq!(after.get("pleg_subscribers", &[]), 1.0);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    let last_seen = after.get("pleg_last_seen_seconds", &[]);
    assert!(
        (now - 5.0..=now + 1.0).contains(&last_seen),
        "{last_seen} vs {now}"
    );

    s.runtime.set_list_failure(Some("runtime gone".into()));
    eventually_async("a counted relist failure", WAIT, || async {
        (s.metrics().await.get("pleg_relist_failures_total", &[]) >= 1.0).then_some(())
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn stream_metrics_follow_the_event_stream() {
    let config = Config::evented().with_relist(RelistDuration {
        relist_period: Duration::from_millis(20),
        relist_threshold: Duration::from_millis(300),
    });
    let pods = vec![pod_with_sandbox("p1", &[("c1", Running)])];
    let s = server(config, "", pods, true).await;
    eventually_async("evented mode, streaming", WAIT, || async {
        let m = s.metrics().await;
        (m.get("pleg_mode", &[("mode", "evented")]) == 1.0
            && m.get("pleg_stream_state", &[("state", "streaming")]) == 1.0)
            .then_some(())
    })
    .await;

    let m = s.metrics().await;
    assert!(m.get("evented_pleg_connection_success_count", &[]) >= 1.0);
    assert_eq!(m.get("pleg_mode", &[("mode", "generic")]), 0.0);

    // c2 starts: the stream reports it.
    let c2 = Container::new("c2", "c2-name", Running);
    let taken = s.runtime.push_event(ContainerEvent {
        id: "c2".into(),
        kind: ContainerEventKind::Started,
        created_at: Some(SystemTime::now()),
        sandbox: Some(SandboxSnapshot {
            pod: Some(PodMeta::new("p1", "p1-name", "default")),
            sandbox: Container::new("sb-p1", "p1-name", Running),
            ips: Vec::new(),
        }),
        containers: vec![Container::new("c1", "c1-name", Running), c2],
    });
    assert_eq!(taken, 1, "one open stream took the event");
    let stream_started = [("type", "ContainerStarted"), ("source", "stream")];
    let m = eventually_async("the stream's event in /metrics", WAIT, || async {
        let m = s.metrics().await;
        (m.get("pleg_events_total", &stream_started) >= 1.0).then_some(m)
    })
    .await;
    assert_eq!(m.get("pleg_events_total", &stream_started), 1.0);
    assert_eq!(m.get("pleg_stream_events_received_total", &[]), 1.0);
    assert_eq!(m.get("pleg_stream_events_applied_total", &[]), 1.0);
    assert_eq!(
        m.get("evented_pleg_connection_latency_seconds_count", &[]),
        1.0
    );
    // The runtime lists c2 from now on (set only now, so that no relist
    // reports it first).
    s.runtime.set_pods(vec![pod_with_sandbox(
        "p1",
        &[("c1", Running), ("c2", Running)],
    )]);
    s.shutdown().await;
}

#[tokio::test]
async fn the_metrics_prefix_is_applied_to_every_family() {
    let s = server(relisting(), "kubelet_", vec![], false).await;
    let m = s.metrics().await;
    for (family, kind) in FAMILIES {
        assert_eq!(m.kind(&format!("kubelet_{family}")), Some(kind), "{family}");
    }
    assert!(m.families.keys().all(|f| f.starts_with("kubelet_")));
    assert!(m.samples.iter().all(|s| s.name.starts_with("kubelet_")));
    assert!(
        m.value(
            "kubelet_pleg_relist_duration_seconds_bucket",
            &[("le", "+Inf")]
        )
        .is_some()
    );
    assert_eq!(m.get("kubelet_running_pods", &[]), 0.0);
    s.shutdown().await;
}

// ---------------------------------------------------------------------------
// Binding.

#[tokio::test]
async fn binding_a_port_in_use_names_the_address() {
    let taken = http::bind("127.0.0.1:0").await.expect("a free port");
    let address = format!("127.0.0.1:{}", taken.local_addr().expect("address").port());
    let error = http::bind(&address).await.expect_err("the port is taken");
    assert!(matches!(error, BindError::InUse { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("health address {address} is already in use")
    );
    assert_eq!(error.address(), address);
}

#[tokio::test]
async fn addresses_that_are_not_host_and_port_are_refused_with_the_reason() {
    for (address, reason) in [
        ("10258", "expected host:port"),
        (":10258", "the host is missing"),
        ("127.0.0.1:99999", "is not a port number"),
        ("127.0.0.1:http", "is not a port number"),
        ("::1:10258", "IPv6 host goes in brackets"),
    ] {
        let error = http::bind(address).await.expect_err(address);
        assert!(
            matches!(error, BindError::InvalidAddress { .. }),
            "{address}: {error:?}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("health address {address:?} is not valid: "))
                && message.contains(reason),
            "{address}: {message}"
        );
    }
    let listener = http::bind("localhost:0").await.expect("a host name works");
    assert!(listener.local_addr().expect("address").ip().is_loopback());
}
