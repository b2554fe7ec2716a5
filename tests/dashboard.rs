//! `deploy/grafana-dashboard.json` against the daemon it charts: the file is
//! a dashboard Grafana imports (schema, a `${datasource}` Prometheus variable
//! and a node variable, panels with unique ids, titles, places and units),
//! every metric its PromQL names is one that a running `pleg run` serves,
//! with the right type for how it is used, and it covers what an operator
//! needs: relisting, events, the event stream, subscribers, Resyncs, health.
//!
//! # The daemon
//! The real binary against the test kit's fake CRI server, after relists,
//! with a gRPC subscriber and a container that exited, so that labelled
//! series (CRI requests, runtime operations, terminations) exist too. A name
//! counts as served when `/metrics` declares its family (`# TYPE`) and has at
//! least one sample of exactly that name: a histogram family is served as
//! `<name>_bucket`, `<name>_sum` and `<name>_count`, never as `<name>`.
//!
//! # The tokenizer
//! Deliberately small, not a PromQL parser: it skips strings, comments,
//! label matchers (`{...}`), ranges and subqueries (`[...]`), Grafana
//! variables (`$x`, `${x}`), numbers and durations, and the label lists of
//! `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`. Every
//! other identifier is a keyword, a PromQL function (it must be a known one)
//! or a metric name. It refuses what it cannot judge (`__name__` matchers,
//! unbalanced brackets) instead of guessing.
//!
//! `PLEG_DASHBOARD=<path>` checks another file instead (a draft).

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

mod cri_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use cri_support::{Running, free_port};
use k8s_cri::v1::{ContainerState as CriState, PodSandboxState};
use pleg::server::grpc::Client;
use pleg::{Delivery, EventType, Filter};
use pleg_testkit::fake_cri::{FakeCriServer, container, sandbox};
use pleg_testkit::temp;
use pleg_testkit::wait::eventually_async;
use serde_json::Value;

/// How long the test waits for the daemon to get somewhere.
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// The dashboard.

fn dashboard_path() -> PathBuf {
    std::env::var_os("PLEG_DASHBOARD").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana-dashboard.json"),
        PathBuf::from,
    )
}

fn dashboard() -> Value {
    let path = dashboard_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel, those inside collapsed rows too.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("a panels array") {
        out.push(panel);
        if let Some(inner) = panel["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

fn is_row(panel: &Value) -> bool {
    panel["type"] == "row"
}

fn title(panel: &Value) -> &str {
    panel["title"].as_str().unwrap_or("<untitled>")
}

/// A PromQL expression and where it is.
struct Query {
    place: String,
    expr: String,
    /// Only its series are asked for (a variable's `label_values`), not
    /// their values: any type of metric will do.
    series_only: bool,
}

/// Every query: each panel target's `expr`, and each query variable's.
fn queries(dashboard: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(Query {
                    place: format!(
                        "panel {} {:?}, target {}",
                        panel["id"],
                        title(panel),
                        target["refId"]
                    ),
                    expr: expr.to_string(),
                    series_only: false,
                });
            }
        }
    }
    for variable in variables(dashboard) {
        if variable["type"] != "query" {
            continue;
        }
        let query = match &variable["query"] {
            Value::String(q) => q.clone(),
            q => q["query"].as_str().unwrap_or_default().to_string(),
        };
        // Grafana's `label_values(selector, label)`: the selector is PromQL.
        let selector = match query
            .trim()
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
        {
            Some(args) => args.rsplit_once(',').map_or(args, |(s, _)| s).to_string(),
            None => query,
        };
        out.push(Query {
            place: format!("variable {}", variable["name"]),
            expr: selector,
            series_only: true,
        });
    }
    out
}

fn variables(dashboard: &Value) -> &[Value] {
    dashboard["templating"]["list"]
        .as_array()
        .map_or(&[], |v| v.as_slice())
}

/// Where a metric is named, and how.
struct Use {
    place: String,
    /// The innermost function call around it, if any.
    function: Option<String>,
    series_only: bool,
}

/// Every metric named anywhere in the dashboard, with its uses.
fn metric_uses(dashboard: &Value) -> BTreeMap<String, Vec<Use>> {
    let mut uses: BTreeMap<String, Vec<Use>> = BTreeMap::new();
    let mut errors = Vec::new();
    for query in queries(dashboard) {
        match metric_names(&query.expr) {
            Ok(found) if found.is_empty() => {
                errors.push(format!("{}: names no metric: {}", query.place, query.expr))
            }
            Ok(found) => {
                for m in found {
                    uses.entry(m.name).or_default().push(Use {
                        place: query.place.clone(),
                        function: m.function,
                        series_only: query.series_only,
                    });
                }
            }
            Err(e) => errors.push(format!("{}: {e}: {}", query.place, query.expr)),
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    uses
}

// ---------------------------------------------------------------------------
// A small PromQL tokenizer.

/// Functions whose argument is a range vector of a counter.
const COUNTER_FUNCTIONS: [&str; 4] = ["rate", "irate", "increase", "resets"];

const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "deg",
    "delta",
    "deriv",
    "double_exponential_smoothing",
    "end",
    "exp",
    "floor",
    "histogram_avg",
    "histogram_count",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_sum",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "info",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "mad_over_time",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_by_label",
    "sort_by_label_desc",
    "sort_desc",
    "sqrt",
    "start",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "vector",
    "year",
];

/// Aggregation operators (case-insensitive, as PromQL reads them).
const AGGREGATIONS: &[&str] = &[
    "avg",
    "bottomk",
    "count",
    "count_values",
    "group",
    "limit_ratio",
    "limitk",
    "max",
    "min",
    "quantile",
    "stddev",
    "stdvar",
    "sum",
    "topk",
];

/// Keywords followed by a label list in parentheses (optional for
/// `group_left` and `group_right`).
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Keywords that stand alone (binary operators, modifiers, literals).
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "atan2", "bool", "offset", "inf", "nan",
];

/// One metric named in an expression.
#[derive(Debug, PartialEq, Eq)]
struct MetricName {
    name: String,
    /// The innermost function call around it, if any.
    function: Option<String>,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The index just past the string that opens at `start` (a `"`, `'` or
/// `` ` ``).
fn skip_string(chars: &[char], start: usize) -> Result<usize, String> {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(format!("unterminated string from offset {start}"))
}

/// The index just past the bracket that closes the one at `start`, with
/// the text between; strings inside are skipped whole.
fn skip_group(chars: &[char], start: usize) -> Result<(usize, String), String> {
    let (open, close) = match chars[start] {
        '(' => ('(', ')'),
        '{' => ('{', '}'),
        '[' => ('[', ']'),
        other => return Err(format!("no group opens with {other:?}")),
    };
    let mut depth = 0;
    let mut i = start;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(chars, i)?;
            continue;
        }
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return Ok((i + 1, chars[start + 1..i].iter().collect()));
            }
        }
        i += 1;
    }
    Err(format!("{open:?} at offset {start} is never closed"))
}

/// The metric names in a PromQL expression, in order of appearance.
fn metric_names(expr: &str) -> Result<Vec<MetricName>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut found = Vec::new();
    // One entry per open parenthesis: the function it calls, if any.
    let mut calls: Vec<Option<String>> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i)?,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '{' => {
                let (end, matchers) = skip_group(&chars, i)?;
                if matchers.contains("__name__") {
                    return Err("a __name__ matcher: name the metric instead".into());
                }
                i = end;
            }
            '[' => i = skip_group(&chars, i)?.0,
            '$' => {
                // A Grafana variable: `${name...}` or `$name`.
                i += 1;
                if chars.get(i) == Some(&'{') {
                    i = skip_group(&chars, i)?.0;
                } else {
                    while i < chars.len() && is_ident_char(chars[i]) {
                        i += 1;
                    }
                }
            }
            '(' => {
                calls.push(None);
                i += 1;
            }
            ')' => {
                calls
                    .pop()
                    .ok_or_else(|| format!("unbalanced ')' at offset {i}"))?;
                i += 1;
            }
            '}' | ']' => return Err(format!("unbalanced {c:?} at offset {i}")),
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                // A number or a duration (`0.99`, `1e3`, `0x1f`, `5m30s`).
                while i < chars.len() && (is_ident_char(chars[i]) || chars[i] == '.') {
                    i += 1;
                }
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < chars.len() && is_ident_char(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let lower = word.to_ascii_lowercase();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let opens_call = chars.get(next) == Some(&'(');
                if LABEL_LIST_KEYWORDS.contains(&lower.as_str()) {
                    if opens_call {
                        i = skip_group(&chars, next)?.0;
                    }
                } else if KEYWORDS.contains(&lower.as_str()) {
                    // An operator, a modifier or a literal: nothing to find.
                } else if opens_call {
                    let known = FUNCTIONS.contains(&word.as_str())
                        || AGGREGATIONS.contains(&lower.as_str());
                    if !known {
                        return Err(format!("unknown function {word}()"));
                    }
                    calls.push(Some(lower));
                    i = next + 1;
                } else if AGGREGATIONS.contains(&lower.as_str()) {
                    // `sum by (x) (...)`: the call's parenthesis comes after
                    // the label list; the next '(' is its.
                    let (after, _) = skip_label_list(&chars, next)?;
                    if chars.get(after) != Some(&'(') {
                        return Err(format!("{word} without its argument"));
                    }
                    calls.push(Some(lower));
                    i = after + 1;
                } else {
                    let function = calls.iter().rev().find_map(|f| f.clone());
                    found.push(MetricName {
                        name: word,
                        function,
                    });
                }
            }
            _ => i += 1,
        }
    }
    if !calls.is_empty() {
        return Err("unbalanced '('".into());
    }
    Ok(found)
}

/// After an aggregation's name at `at` (past whitespace): an optional
/// `by (...)` or `without (...)`; the index of what follows, past
/// whitespace.
fn skip_label_list(chars: &[char], at: usize) -> Result<(usize, bool), String> {
    let skip_ws = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let mut end = at;
    while end < chars.len() && is_ident_char(chars[end]) {
        end += 1;
    }
    let word: String = chars[at..end].iter().collect();
    if matches!(word.to_ascii_lowercase().as_str(), "by" | "without") {
        let open = skip_ws(end);
        if chars.get(open) != Some(&'(') {
            return Err(format!("{word} without its label list"));
        }
        let (after, _) = skip_group(chars, open)?;
        return Ok((skip_ws(after), true));
    }
    Ok((at, false))
}

fn names(expr: &str) -> Vec<(String, Option<String>)> {
    metric_names(expr)
        .unwrap_or_else(|e| panic!("{expr}: {e}"))
        .into_iter()
        .map(|m| (m.name, m.function))
        .collect()
}

fn named(pairs: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
    pairs
        .iter()
        .map(|(n, f)| (n.to_string(), f.map(str::to_string)))
        .collect()
}

#[test]
fn the_tokenizer_finds_metric_names_and_nothing_else() {
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (instance, le) (rate(pleg_relist_duration_seconds_bucket{instance=~"$instance", le!="+Inf"}[$__rate_interval])))"#
        ),
        named(&[("pleg_relist_duration_seconds_bucket", Some("rate"))])
    );
    assert_eq!(
        names(
            r#"sum without (code) (rate(a_total[5m] offset 1h)) / on (instance) group_left (mode) b == bool 1 and c or vector(0)"#
        ),
        named(&[("a_total", Some("rate")), ("b", None), ("c", None)])
    );
    assert_eq!(
        names(r#"(time() - last_seen{x="sum(rate(fake[1m]))"}) < bool ${threshold:raw}"#),
        named(&[("last_seen", None)])
    );
    assert_eq!(
        names("max_over_time(rate(x_total[1m])[1h:5m]) # a comment naming y\n+ 1e3 * .5"),
        named(&[("x_total", Some("rate"))])
    );
    assert_eq!(
        names("SUM(increase(ns:recorded:rate5m[5m])) by (le)"),
        named(&[("ns:recorded:rate5m", Some("increase"))])
    );
    assert_eq!(
        names("topk(3, g) + count_values(\"v\", h) + group_left_total"),
        named(&[
            ("g", Some("topk")),
            ("h", Some("count_values")),
            ("group_left_total", None),
        ])
    );
    for (bad, why) in [
        ("ratee(x[1m])", "unknown function ratee()"),
        ("sum(rate(x[1m])", "unbalanced '('"),
        (r#"{__name__="x"}"#, "__name__"),
        (r#"x{a="b}"#, "unterminated string"),
        ("x]", "unbalanced"),
    ] {
        let error = metric_names(bad).expect_err(bad);
        assert!(error.contains(why), "{bad}: {error}");
    }
}

// ---------------------------------------------------------------------------
// Structure.

#[test]
fn the_dashboard_is_importable_with_a_datasource_and_a_node_variable() {
    let d = dashboard();
    let schema = d["schemaVersion"].as_u64().expect("a schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    for field in ["title", "uid"] {
        assert!(
            d[field].as_str().is_some_and(|s| !s.is_empty()),
            "the dashboard has a {field}"
        );
    }
    assert!(
        d["id"].is_null(),
        "no fixed id, so that the import creates one"
    );

    let variables = variables(&d);
    let datasource = variables
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a `datasource` variable");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let instance = variables
        .iter()
        .find(|v| v["name"] == "instance")
        .expect("an `instance` (node) variable");
    assert_eq!(instance["type"], "query");
    assert_eq!(instance["datasource"]["uid"], "${datasource}");

    let mut ids = BTreeSet::new();
    let mut problems = Vec::new();
    let mut areas: Vec<(&str, [u64; 4])> = Vec::new();
    for panel in panels(&d) {
        let name = title(panel);
        match panel["id"].as_u64() {
            Some(id) if ids.insert(id) => {}
            Some(id) => problems.push(format!("{name:?}: id {id} is taken")),
            None => problems.push(format!("{name:?}: no numeric id")),
        }
        if panel["title"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("panel {}: no title", panel["id"]));
        }
        let g = &panel["gridPos"];
        let place = ["x", "y", "w", "h"].map(|k| g[k].as_u64());
        let [Some(x), Some(y), Some(w), Some(h)] = place else {
            problems.push(format!("{name:?}: gridPos {g} lacks x, y, w or h"));
            continue;
        };
        if w == 0 || h == 0 || x + w > 24 {
            problems.push(format!(
                "{name:?}: gridPos {g} is not on the 24-column grid"
            ));
        }
        for (other, [ox, oy, ow, oh]) in &areas {
            if x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h {
                problems.push(format!("{name:?} overlaps {other:?}"));
            }
        }
        areas.push((name, [x, y, w, h]));
        if is_row(panel) {
            continue;
        }
        if panel["datasource"]["uid"] != "${datasource}" {
            problems.push(format!(
                "{name:?}: datasource {} is not the ${{datasource}} variable",
                panel["datasource"]
            ));
        }
        let unit = &panel["fieldConfig"]["defaults"]["unit"];
        if unit.as_str().is_none_or(str::is_empty) {
            problems.push(format!("{name:?}: no unit"));
        }
        let targets = panel["targets"]
            .as_array()
            .map_or(&[][..], |t| t.as_slice());
        if targets.is_empty() {
            problems.push(format!("{name:?}: no target"));
        }
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            if target["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                problems.push(format!("{name:?}: a target without an expr"));
            }
            if !ref_ids.insert(target["refId"].to_string()) {
                problems.push(format!("{name:?}: refId {} twice", target["refId"]));
            }
            let ds = &target["datasource"];
            if !ds.is_null() && ds["uid"] != "${datasource}" {
                problems.push(format!("{name:?}: a target's datasource is {ds}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_dashboard_covers_relisting_events_the_stream_subscribers_resyncs_and_health() {
    let uses = metric_uses(&dashboard());
    let topics: [(&str, &[&str]); 10] = [
        ("relist duration", &["pleg_relist_duration_seconds_bucket"]),
        ("relist interval", &["pleg_relist_interval_seconds_bucket"]),
        ("events by type and source", &["pleg_events_total"]),
        ("stale drops", &["pleg_stale_events_dropped_total"]),
        ("event-stream state", &["pleg_stream_state", "pleg_mode"]),
        ("subscribers", &["pleg_subscribers"]),
        ("subscriber lag", &["pleg_discard_events"]),
        (
            "Resyncs",
            &[
                "pleg_stream_gaps_total",
                "pleg_stream_buffer_overflows_total",
                "pleg_watch_resumes_total",
            ],
        ),
        ("health", &["pleg_last_seen_seconds"]),
        (
            "runtime errors and latency",
            &[
                "pleg_cri_requests_total",
                "pleg_runtime_operation_duration_seconds_bucket",
            ],
        ),
    ];
    let missing: Vec<String> = topics
        .iter()
        .flat_map(|(topic, metrics)| {
            metrics
                .iter()
                .filter(|m| !uses.contains_key(**m))
                .map(move |m| format!("{topic}: no query uses {m}"))
        })
        .collect();
    assert!(missing.is_empty(), "{}", missing.join("\n"));

    // Events are charted both by type and by source.
    let d = dashboard();
    let exprs: Vec<String> = queries(&d).into_iter().map(|q| q.expr).collect();
    for label in ["type", "source"] {
        let by = format!("by ({label})");
        assert!(
            exprs
                .iter()
                .any(|e| e.contains("pleg_events_total") && e.contains(&by)),
            "no query sums pleg_events_total {by}"
        );
    }
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("histogram_quantile") && e.contains("pleg_relist_duration")),
        "no relist-duration quantile"
    );
}

// ---------------------------------------------------------------------------
// Against a running daemon.

/// A `/metrics` exposition: each family's type, and each sample name.
struct Exposition {
    kinds: BTreeMap<String, String>,
    samples: BTreeSet<String>,
}

fn parse_exposition(text: &str) -> Exposition {
    let mut kinds = BTreeMap::new();
    let mut samples = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            kinds.insert(name.to_string(), kind.to_string());
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_string());
        }
    }
    Exposition { kinds, samples }
}

impl Exposition {
    /// The type of the family a sample name of `name` belongs to, or why
    /// `/metrics` does not serve it.
    fn kind_of(&self, name: &str) -> Result<&str, String> {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                (self.kinds.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(name);
        let kind = match self.kinds.get(family) {
            Some(kind) if kind == "histogram" && family == name => {
                return Err(format!(
                    "{name} is a histogram: its series are {name}_bucket, {name}_sum and {name}_count"
                ));
            }
            Some(kind) => kind.as_str(),
            None => return Err(format!("/metrics has no family {name}")),
        };
        if !self.samples.contains(name) {
            return Err(format!(
                "/metrics declares {family} ({kind}) but has no sample {name}"
            ));
        }
        Ok(kind)
    }
}

/// The fake runtime: two pods with one running container each.
async fn fake_runtime() -> FakeCriServer {
    let server = FakeCriServer::start().await.expect("fake CRI server");
    for (sb, uid, name) in [("sb1", "uid-1", "web"), ("sb2", "uid-2", "db")] {
        server.put_sandbox(sandbox(
            sb,
            uid,
            name,
            "shop",
            PodSandboxState::SandboxReady,
        ));
        server.put_container(container(
            &format!("{sb}-app"),
            sb,
            "app",
            0,
            CriState::ContainerRunning,
        ));
    }
    server
}

async fn get_metrics(port: u16) -> Option<String> {
    let reply = pleg_testkit::http::get(format!("127.0.0.1:{port}"), "/metrics")
        .await
        .ok()?;
    (reply.status == 200).then_some(reply.body)
}

/// The value of an unlabelled sample.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (n, v) = line.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_names_is_served_by_a_running_daemon() {
    let uses = metric_uses(&dashboard());

    let server = fake_runtime().await;
    let dir = temp::dir("dashboard");
    let port = free_port();
    let socket = dir.path().join("pleg.sock");
    let daemon = Running(
        Command::new(env!("CARGO_BIN_EXE_pleg"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .args(["run", "--runtime-endpoint", &server.endpoint()])
            .args(["--relist-period", "100ms", "--relist-threshold", "1s"])
            .args(["--health-addr", &format!("127.0.0.1:{port}")])
            .arg("--grpc-socket")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pleg run"),
    );
    eventually_async("relists, and the event stream open", WAIT, || async move {
        let text = get_metrics(port).await?;
        (sample(&text, "pleg_relists_total")? >= 1.0
            && text.contains("pleg_stream_state{state=\"streaming\"} 1"))
        .then_some(())
    })
    .await;

    // A subscriber, and a container that exits while it watches.
    let mut client = Client::connect(&socket).await.expect("connect");
    let mut watch = client.watch(&Filter::all(), 100).await.expect("watch");
    server.exit_container("sb1-app", 3);
    let died = tokio::time::timeout(WAIT, async {
        loop {
            match watch.next().await {
                Some(Ok(Delivery::Event(e))) if e.kind == EventType::ContainerDied => break e,
                Some(Ok(_)) => continue,
                other => panic!("the watch ended with {other:?}"),
            }
        }
    })
    .await
    .expect("the subscriber sees the container die");
    assert_eq!(died.container_id().map(|c| c.as_str()), Some("sb1-app"));
    let text = eventually_async(
        "the subscriber and the exit in /metrics",
        WAIT,
        || async move {
            let text = get_metrics(port).await?;
            (sample(&text, "pleg_subscribers")? >= 1.0
                && text.contains("terminated_containers_total{"))
            .then_some(text)
        },
    )
    .await;
    let exposition = parse_exposition(&text);

    let mut problems = Vec::new();
    for (name, places) in &uses {
        let kind = match exposition.kind_of(name) {
            Ok(kind) => kind,
            Err(why) => {
                problems.push(format!("{name}: {why}; used in {}", places[0].place));
                continue;
            }
        };
        for Use {
            place,
            function,
            series_only,
        } in places
        {
            if *series_only {
                continue;
            }
            let in_counter_function = function
                .as_deref()
                .is_some_and(|f| COUNTER_FUNCTIONS.contains(&f));
            let counter_like = kind == "counter" || kind == "histogram";
            if counter_like && !in_counter_function {
                problems.push(format!(
                    "{name} ({kind}) outside rate/irate/increase/resets in {place}"
                ));
            }
            if !counter_like && in_counter_function {
                problems.push(format!(
                    "{name} ({kind}) under a counter function in {place}"
                ));
            }
        }
    }
    drop(watch);
    daemon.terminate();
    assert!(
        problems.is_empty(),
        "the dashboard names metrics that a running daemon does not serve as used:\n{}",
        problems.join("\n")
    );
}
