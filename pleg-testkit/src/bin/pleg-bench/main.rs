//! `pleg-bench`: pleg against real containerd (the project's bench
//! instances of 1.7 and 2.1), with ground truth.
//!
//! For each containerd version and each mode (evented, generic at 1 s,
//! generic at 100 ms) it starts `pleg run` (the release build) as a
//! separate process, subscribes over gRPC (`Watch`), drives a workload
//! through the test kit's crictl-style driver while recording every
//! transition it causes, and compares. Scenarios: steady (N idle pods of a
//! sandbox and two containers: CPU and relist cost), churn (a fixed rate of
//! starts, self-exits with codes, stops, removals, new attempts, whole
//! pods), short-lived (containers that exit within milliseconds) and
//! restart (churn while containerd is SIGKILLed and brought up again).
//!
//! It writes `REPORT.md`, `results.json` and PNG plots to `--out`
//! (default `bench/`). `scripts/bench-containerd.sh [--quick]` builds it
//! and brings the instances up; `--quick` is a short run (smaller N, short
//! windows) that asserts no time and only has to finish.

#![forbid(unsafe_code)]

mod analysis;
mod containerd;
mod daemon;
mod plot;
mod procstat;
mod report;
mod subscriber;
mod truth;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::time::Instant;

use crate::analysis::{Completeness, Latencies};
use crate::containerd::Containerd;
use crate::daemon::{Daemon, Metrics, Mode};
use crate::procstat::CpuSample;
use crate::subscriber::Subscriber;
use crate::workload::Workload;

/// pleg against the project-local containerd, with ground truth.
#[derive(Debug, Parser)]
#[command(name = "pleg-bench", about)]
struct Args {
    /// A short run (small N, short windows) that only has to finish.
    #[arg(long)]
    quick: bool,
    /// Where REPORT.md, results.json and the plots go.
    #[arg(long, default_value = "bench")]
    out: PathBuf,
    /// The pleg binary (a release build).
    #[arg(long, default_value = "target/release/pleg")]
    pleg: PathBuf,
    /// scripts/containerd.sh.
    #[arg(long, default_value = "scripts/containerd.sh")]
    containerd_script: PathBuf,
    /// containerd versions (bench instances of scripts/containerd.sh).
    #[arg(long, value_delimiter = ',', default_value = "1.7,2.1")]
    versions: Vec<String>,
    /// Churn rate, transitions per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Only these runs, as `SCENARIO` or `SCENARIO:MODE` (steady, churn,
    /// short-lived, restart; evented, generic-1s, generic-100ms), comma
    /// separated; the scale section is left out. For chasing one result.
    #[arg(long, value_delimiter = ',', value_parser = parse_only)]
    only: Vec<(Scenario, Option<Mode>)>,
    /// The daemons' `--log-level`; their logs are copied to `--out/logs/`
    /// when it is not `warn`.
    #[arg(long, default_value = "warn")]
    daemon_log_level: String,
    /// The steady scenario's pod counts, instead of the plan's (10, 100,
    /// 300; 10 with `--quick`).
    #[arg(long, value_delimiter = ',')]
    steady_pods: Vec<usize>,
    /// The steady scenario's idle window at every N, instead of the plan's
    /// (`30s`, `2m`).
    #[arg(long, value_parser = parse_window)]
    idle: Option<Duration>,
}

/// `30s`, `2m`, `1500ms`.
fn parse_window(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |i| text.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a window like 30s, 2m or 1500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{text:?} is not a window like 30s, 2m or 1500ms")),
    }
}

/// `restart:generic-1s` or `churn`.
fn parse_only(text: &str) -> Result<(Scenario, Option<Mode>), String> {
    let (scenario, mode) = match text.split_once(':') {
        Some((s, m)) => (s, Some(m)),
        None => (text, None),
    };
    let scenario = Scenario::ALL
        .into_iter()
        .find(|s| s.name() == scenario)
        .ok_or_else(|| {
            format!("unknown scenario {scenario:?} (steady, churn, short-lived or restart)")
        })?;
    let mode = match mode {
        None => None,
        Some(m) => Some(
            Mode::ALL
                .into_iter()
                .find(|x| x.name() == m)
                .ok_or_else(|| {
                    format!("unknown mode {m:?} (evented, generic-1s or generic-100ms)")
                })?,
        ),
    };
    Ok((scenario, mode))
}

/// With `--quick`, a containerd version starts only this soon after the
/// bench did: one version's quick run takes 100 to 140 s here, and the
/// whole run must stay under 3 minutes.
const QUICK_NEXT_VERSION_BEFORE: Duration = Duration::from_secs(60);

/// How big and how long.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Plan {
    pub(crate) quick: bool,
    pub(crate) steady_pods: Vec<usize>,
    pub(crate) idle: Duration,
    pub(crate) idle_largest: Duration,
    pub(crate) churn_pods: usize,
    pub(crate) churn_for: Duration,
    pub(crate) rate: f64,
    pub(crate) short_lived: usize,
    pub(crate) restart_for: Duration,
    pub(crate) restart_modes: Vec<Mode>,
    pub(crate) floor_times: usize,
    /// `--only`: the runs to make (all when empty).
    pub(crate) only: Vec<(Scenario, Option<Mode>)>,
}

impl Plan {
    fn new(quick: bool, rate: f64, only: Vec<(Scenario, Option<Mode>)>) -> Plan {
        if quick {
            Plan {
                quick,
                steady_pods: vec![10],
                idle: Duration::from_secs(3),
                idle_largest: Duration::from_secs(3),
                churn_pods: 10,
                churn_for: Duration::from_secs(6),
                rate,
                short_lived: 6,
                restart_for: Duration::from_secs(10),
                restart_modes: vec![Mode::Evented],
                floor_times: 5,
                only,
            }
        } else {
            Plan {
                quick,
                steady_pods: vec![10, 100, 300],
                idle: Duration::from_secs(20),
                idle_largest: Duration::from_secs(30),
                churn_pods: 100,
                churn_for: Duration::from_secs(30),
                rate,
                short_lived: 30,
                restart_for: Duration::from_secs(24),
                restart_modes: Mode::ALL.to_vec(),
                floor_times: 20,
                only,
            }
        }
    }

    /// Whether `--only` leaves this run in.
    fn wanted(&self, scenario: Scenario, mode: Mode) -> bool {
        self.only.is_empty()
            || self
                .only
                .iter()
                .any(|&(s, m)| s == scenario && m.is_none_or(|m| m == mode))
    }

    /// The runs at `n` pods, in order.
    fn runs_at(&self, n: usize) -> Vec<(Scenario, Mode)> {
        let mut runs = Vec::new();
        if self.steady_pods.contains(&n) {
            runs.extend(Mode::ALL.map(|m| (Scenario::Steady, m)));
        }
        if n == self.churn_pods {
            runs.extend(Mode::ALL.map(|m| (Scenario::Churn, m)));
            runs.extend(Mode::ALL.map(|m| (Scenario::ShortLived, m)));
            runs.extend(self.restart_modes.iter().map(|&m| (Scenario::Restart, m)));
        }
        runs.retain(|&(s, m)| self.wanted(s, m));
        runs
    }

    /// The pod counts that have runs, smallest first.
    fn sizes(&self) -> Vec<usize> {
        let mut ns = self.steady_pods.clone();
        ns.push(self.churn_pods);
        ns.sort_unstable();
        ns.dedup();
        ns.retain(|&n| !self.runs_at(n).is_empty());
        ns
    }

    fn runs_per_version(&self) -> usize {
        self.sizes().iter().map(|&n| self.runs_at(n).len()).sum()
    }
}

/// The scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum Scenario {
    Steady,
    Churn,
    ShortLived,
    Restart,
}

impl Scenario {
    const ALL: [Scenario; 4] = [
        Scenario::Steady,
        Scenario::Churn,
        Scenario::ShortLived,
        Scenario::Restart,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Churn => "churn",
            Scenario::ShortLived => "short-lived",
            Scenario::Restart => "restart",
        }
    }
}

/// `97.0 % ≤ 1 ms, 99.1 % ≤ 2.5 ms`.
pub(crate) fn shares_text_fine(shares: &[(f64, f64, f64)]) -> String {
    shares
        .iter()
        .map(|(b, share, _)| format!("{:.1} % ≤ {} ms", share * 100.0, b * 1e3))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `97.0 % ≤ 5 ms, 99.1 % ≤ 10 ms`.
pub(crate) fn shares_text(shares: &[(f64, f64, f64)]) -> String {
    shares
        .iter()
        .map(|(b, share, _)| format!("{:.1} % ≤ {:.0} ms", share * 100.0, b * 1e3))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How long a container may have lived and still fallen between two
/// relists: the period plus a relist, or the longest gap between relist
/// starts seen (the upper bound of its histogram bucket), whichever is
/// longer. `None` in evented mode: no miss is documented there.
fn short_bound(mode: Mode, relist_mean: Duration, gap_s: Option<f64>) -> Option<Duration> {
    let period = mode.period()?;
    let floor = period + relist_mean + Duration::from_millis(20);
    let gap = gap_s
        .filter(|g| g.is_finite())
        .map_or(Duration::ZERO, Duration::from_secs_f64);
    Some(floor.max(gap))
}

/// A histogram's buckets between two scrapes: (upper bound, observations
/// at or below it), ascending, and the count.
fn histogram_delta(m0: &Metrics, m1: &Metrics, name: &str) -> (Vec<(f64, f64)>, f64) {
    let bucket = format!("{name}_bucket");
    let b0 = m0.by_label(&bucket, "le");
    let mut buckets: Vec<(f64, f64)> = m1
        .by_label(&bucket, "le")
        .into_iter()
        .filter_map(|(le, v)| {
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, v - b0.get(&le).copied().unwrap_or(0.0)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = m1.sum(&format!("{name}_count"), &[]) - m0.sum(&format!("{name}_count"), &[]);
    (buckets, count)
}

/// The upper bound of the bucket of a histogram's largest observation
/// between two scrapes, seconds.
fn histogram_max(m0: &Metrics, m1: &Metrics, name: &str) -> Option<f64> {
    let (buckets, count) = histogram_delta(m0, m1, name);
    if count <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, n)| *n >= count)
        .map(|(bound, _)| *bound)
}

/// The share of a histogram's observations between two scrapes at or
/// below each of `bounds`: (bound, share, count).
fn histogram_shares(
    m0: &Metrics,
    m1: &Metrics,
    name: &str,
    bounds: &[f64],
) -> Vec<(f64, f64, f64)> {
    let (buckets, count) = histogram_delta(m0, m1, name);
    if count <= 0.0 {
        return Vec::new();
    }
    bounds
        .iter()
        .filter_map(|b| {
            let (_, n) = buckets.iter().find(|(bound, _)| (bound - b).abs() < 1e-9)?;
            Some((*b, n / count, count))
        })
        .collect()
}

/// Relist figures over a window, from pleg's /metrics.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct RelistFigures {
    pub(crate) relists: f64,
    /// Mean `pleg_relist_duration_seconds` per relist, ms.
    pub(crate) mean_ms: Option<f64>,
    /// Mean runtime time (the `ListPods` operation: ListPodSandbox +
    /// ListContainers) per relist, ms.
    pub(crate) rpc_ms: Option<f64>,
    /// `mean_ms - rpc_ms`: pleg's own part.
    pub(crate) own_ms: Option<f64>,
    /// Where `own_ms` came from.
    pub(crate) own_source: String,
    /// CRI requests in the window, all methods.
    pub(crate) cri_calls: f64,
    pub(crate) cri_by_method: std::collections::BTreeMap<String, f64>,
}

/// A histogram's shares: (bound s, share at or below it, observations).
pub(crate) type Shares = Vec<(f64, f64, f64)>;

/// One run: a scenario, a mode, a containerd.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RunResult {
    pub(crate) version: String,
    pub(crate) mode: Mode,
    pub(crate) scenario: Scenario,
    pub(crate) pods: usize,
    pub(crate) window_s: f64,
    pub(crate) pleg_cpu_s: f64,
    /// containerd alone (its pid file); `None` when it was restarted.
    pub(crate) containerd_cpu_s: Option<f64>,
    /// Its shims (`containerd-shim-runc-v2 -address <socket>`), not in
    /// `containerd_cpu_s`.
    pub(crate) shims_cpu_s: f64,
    pub(crate) peak_rss_kib: Option<u64>,
    /// Mean wait for a CPU per timeslice of pleg's threads (schedstat), ms.
    pub(crate) pleg_cpu_wait_ms: Option<f64>,
    pub(crate) relist: RelistFigures,
    /// Bare ListPodSandbox + ListContainers, ms each pair (steady only).
    pub(crate) floor_ms: Vec<f64>,
    pub(crate) completeness: Completeness,
    #[serde(skip)]
    pub(crate) latencies: Latencies,
    pub(crate) latency: Option<analysis::Summary>,
    pub(crate) latency_live: Option<analysis::Summary>,
    pub(crate) own_latency: Option<analysis::Summary>,
    /// The CRI event's `created_at` minus the ground truth (stream events).
    pub(crate) runtime_lag: Option<analysis::Summary>,
    /// The longest gap between relist starts in the run (the upper bound
    /// of its `pleg_relist_interval_seconds` bucket), s.
    pub(crate) longest_relist_gap_s: Option<f64>,
    /// pleg's own view of stream latency (`created_at` to applied,
    /// `evented_pleg_connection_latency_seconds`): (bound s, share at or
    /// below it, events).
    pub(crate) stream_latency_in_pleg: Vec<(f64, f64, f64)>,
    /// The same events split at pleg's stream reader: the runtime's
    /// `created_at` to the reader holding the event decoded
    /// (`pleg_stream_delivery_seconds`), and from there to applied
    /// (`pleg_stream_apply_seconds`): (mean ms, shares as above).
    pub(crate) stream_delivery: Option<(f64, Shares)>,
    pub(crate) stream_apply: Option<(f64, Shares)>,
    pub(crate) resyncs: Vec<String>,
    pub(crate) transitions: usize,
    pub(crate) driver_failures: u64,
    pub(crate) notes: Vec<String>,
    pub(crate) error: Option<String>,
    /// When containerd was down (the restart scenario).
    #[serde(skip)]
    pub(crate) outage: Option<(std::time::SystemTime, std::time::SystemTime)>,
}

impl RunResult {
    fn new(version: &str, mode: Mode, scenario: Scenario, pods: usize) -> RunResult {
        RunResult {
            version: version.to_string(),
            mode,
            scenario,
            pods,
            window_s: 0.0,
            pleg_cpu_s: 0.0,
            containerd_cpu_s: None,
            shims_cpu_s: 0.0,
            peak_rss_kib: None,
            pleg_cpu_wait_ms: None,
            relist: RelistFigures::default(),
            floor_ms: Vec::new(),
            completeness: Completeness::default(),
            latencies: Latencies::default(),
            latency: None,
            latency_live: None,
            own_latency: None,
            runtime_lag: None,
            longest_relist_gap_s: None,
            stream_latency_in_pleg: Vec::new(),
            stream_delivery: None,
            stream_apply: None,
            resyncs: Vec::new(),
            transitions: 0,
            driver_failures: 0,
            notes: Vec::new(),
            outage: None,
            error: None,
        }
    }
}

/// Relist cost and memory against N containers of the fake CRI, against a
/// baseline run with none.
async fn measure_scale(pleg: &std::path::Path, sizes: &[usize]) -> Result<ScaleSection> {
    use pleg_testkit::scale::measure;
    let baseline = measure(pleg, 0, 4)
        .await
        .context("the baseline (0 containers)")?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut rows = Vec::new();
    let mut growth = None;
    for &n in sizes {
        let f = measure(pleg, n, 4)
            .await
            .with_context(|| format!("{n} containers"))?
            .compared_with(&baseline);
        let per = f.rss_bytes_per_container.unwrap_or(0.0);
        growth = Some(per / 1024.0);
        rows.push((
            format!("{n} containers ({} pods)", f.pods),
            format!(
                "relist {:.2} ms mean, {:.2} ms median (runtime RPCs {:.2} ms, pleg's own {:.2} ms); \
                 VmRSS {:.1} MiB, VmHWM {:.1} MiB; RSS growth {per:.0} B per container",
                f.relist_seconds_mean * 1e3,
                f.relist_seconds_median * 1e3,
                f.rpc_seconds * 1e3,
                f.own_seconds * 1e3,
                mib(f.rss_bytes),
                mib(f.hwm_bytes),
            ),
        ));
    }
    Ok(ScaleSection {
        note: format!(
            "`pleg run` (generic, 1 s) against the test kit's fake CRI server in this process, \
             4 containers a pod; baseline with 0 containers: VmRSS {:.1} MiB. Growth is over \
             that baseline.",
            mib(baseline.rss_bytes)
        ),
        rows,
        growth_kib_per_container: growth,
    })
}

/// What a scale measurement gave (the scale section), when there is one.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct ScaleSection {
    pub(crate) note: String,
    pub(crate) rows: Vec<(String, String)>,
    pub(crate) growth_kib_per_container: Option<f64>,
}

struct Ctx {
    args: Args,
    plan: Plan,
    run_id: String,
    scratch: PathBuf,
    bar: ProgressBar,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PLEG_BENCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pleg-bench: error: a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pleg-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<ExitCode> {
    let started = Instant::now();
    if !args.pleg.exists() {
        anyhow::bail!(
            "the pleg binary {} does not exist: build it with `cargo build --release --bin pleg` (scripts/bench-containerd.sh does)",
            args.pleg.display()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating the output directory {}", args.out.display()))?;
    let mut plan = Plan::new(args.quick, args.rate, args.only.clone());
    if !args.steady_pods.is_empty() {
        plan.steady_pods.clone_from(&args.steady_pods);
    }
    if let Some(idle) = args.idle {
        plan.idle = idle;
        plan.idle_largest = idle;
    }
    let run_id = format!("{}-{}", std::process::id(), fastrand::u32(..) % 100_000);
    let scratch = std::env::temp_dir().join(format!("pleg-bench-{run_id}"));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let bar = ProgressBar::new((plan.runs_per_version() * args.versions.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let ctx = Ctx {
        args,
        plan,
        run_id,
        scratch,
        bar,
    };

    let mut results: Vec<RunResult> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    let endpoints: parking_lot::Mutex<Vec<String>> = parking_lot::Mutex::new(Vec::new());
    let body = async {
        for version in ctx.args.versions.clone() {
            if ctx.plan.quick && started.elapsed() > QUICK_NEXT_VERSION_BEFORE {
                skipped.push(format!(
                    "containerd {version}: skipped by --quick (over 60 s spent already: it must finish within 3 minutes)"
                ));
                ctx.bar.inc(ctx.plan.runs_per_version() as u64);
                continue;
            }
            if !containerd::script_supports(&ctx.args.containerd_script, &version).await {
                skipped.push(format!(
                    "containerd {version}: {} does not know --version {version}",
                    ctx.args.containerd_script.display()
                ));
                ctx.bar.inc(ctx.plan.runs_per_version() as u64);
                continue;
            }
            ctx.bar.set_message(format!("containerd {version}: up"));
            let target = match Containerd::up(&ctx.args.containerd_script, &version).await {
                Ok(t) => t,
                Err(e) => {
                    skipped.push(format!("containerd {version}: not up: {e:#}"));
                    ctx.bar.inc(ctx.plan.runs_per_version() as u64);
                    continue;
                }
            };
            endpoints.lock().push(target.endpoint.clone());
            match workload::remove_pods(&target.endpoint, None).await {
                Ok(0) => {}
                Ok(n) => ctx.bar.println(format!(
                    "containerd {version}: removed {n} pods left by earlier runs"
                )),
                Err(e) => ctx
                    .bar
                    .println(format!("containerd {version}: cleanup: {e:#}")),
            }
            let outcome = bench_version(&ctx, &target, &mut results).await;
            if let Err(e) = workload::remove_pods(&target.endpoint, Some(&ctx.run_id)).await {
                ctx.bar.println(format!(
                    "containerd {version}: removing the bench's pods: {e:#}"
                ));
            }
            if let Err(e) = outcome {
                skipped.push(format!("containerd {version}: stopped: {e:#}"));
            }
        }
    };
    tokio::select! {
        () = body => {}
        _ = tokio::signal::ctrl_c() => {
            ctx.bar.println("pleg-bench: interrupted; removing the bench's pods");
            let touched = endpoints.lock().clone();
            for endpoint in &touched {
                let _ = workload::remove_pods(endpoint, Some(&ctx.run_id)).await;
            }
            return Ok(ExitCode::from(130));
        }
    }
    ctx.bar.finish_with_message("done");

    // Scale: the same relist cost and memory through the fake CRI, pleg in
    // a process of its own (pleg_testkit::scale), 4 containers a pod.
    let sizes: &[usize] = if !ctx.plan.only.is_empty() {
        &[]
    } else if ctx.args.quick {
        &[1_000]
    } else {
        &[1_000, 10_000, 50_000]
    };
    ctx.bar.println("pleg-bench: scale (fake CRI)");
    let scale = measure_scale(&ctx.args.pleg, sizes)
        .await
        .unwrap_or_else(|e| {
            skipped.push(format!("scale: {e:#}"));
            ScaleSection {
                note: format!("not measured: {e:#}"),
                ..ScaleSection::default()
            }
        });

    let wall = started.elapsed();
    let plots = plot::all(&ctx.args.out, &results).unwrap_or_else(|e| {
        skipped.push(format!("plots: {e:#}"));
        Vec::new()
    });
    let text = report::render(&report::Input {
        plan: &ctx.plan,
        results: &results,
        skipped: &skipped,
        scale: &scale,
        plots: &plots,
        wall,
        profiles: ctx.args.out.join("PROFILES.md").exists(),
    });
    let report_path = ctx.args.out.join("REPORT.md");
    std::fs::write(&report_path, text)
        .with_context(|| format!("writing {}", report_path.display()))?;
    let json_path = ctx.args.out.join("results.json");
    let json = serde_json::json!({
        "plan": &ctx.plan,
        "wall_s": wall.as_secs_f64(),
        "skipped": &skipped,
        "runs": &results,
        "scale": &scale,
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let _ = std::fs::remove_dir_all(&ctx.scratch);
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    println!(
        "pleg-bench: {} runs ({failed} failed) in {:.0} s; report {}",
        results.len(),
        wall.as_secs_f64(),
        report_path.display()
    );
    for s in &skipped {
        println!("pleg-bench: {s}");
    }
    Ok(if failed > 0 || results.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Every scenario on one containerd.
async fn bench_version(ctx: &Ctx, target: &Containerd, results: &mut Vec<RunResult>) -> Result<()> {
    let mut wl = Workload::new(
        &target.endpoint,
        &target.image,
        &ctx.run_id,
        &target.version,
    )?;
    let largest = ctx.plan.steady_pods.iter().copied().max().unwrap_or(0);
    for n in ctx.plan.sizes() {
        ctx.bar
            .set_message(format!("containerd {}: {n} pods", target.version));
        wl.grow_to(n)
            .await
            .with_context(|| format!("bringing containerd {} to {n} pods", target.version))?;
        wl.recorder.take();
        let scenarios = ctx.plan.runs_at(n).into_iter().map(|(scenario, mode)| {
            let length = match scenario {
                Scenario::Steady if n == largest => ctx.plan.idle_largest,
                Scenario::Steady => ctx.plan.idle,
                Scenario::Churn => ctx.plan.churn_for,
                Scenario::ShortLived => Duration::ZERO,
                Scenario::Restart => ctx.plan.restart_for,
            };
            (scenario, mode, length)
        });
        for (scenario, mode, length) in scenarios {
            ctx.bar.set_message(format!(
                "containerd {}: {} {} ({n} pods)",
                target.version,
                scenario.name(),
                mode.name()
            ));
            let mut result = RunResult::new(&target.version, mode, scenario, n);
            if let Err(e) = one_run(ctx, target, &wl, &mut result, length).await {
                let text = format!("{e:#}");
                ctx.bar.println(format!(
                    "containerd {} {} {}: failed: {text}",
                    target.version,
                    scenario.name(),
                    mode.name()
                ));
                result.error = Some(text);
            }
            results.push(result);
            ctx.bar.inc(1);
            wl.recorder.take();
        }
    }
    wl.teardown().await;
    Ok(())
}

fn cpu_pids(target: &Containerd) -> (Vec<u32>, Vec<u32>) {
    (
        target.pid().into_iter().collect(),
        procstat::shim_pids(&target.socket),
    )
}

/// One scenario in one mode: a daemon of its own, a subscriber, the load,
/// the figures.
async fn one_run(
    ctx: &Ctx,
    target: &Containerd,
    wl: &Workload,
    result: &mut RunResult,
    length: Duration,
) -> Result<()> {
    let mode = result.mode;
    let dir = ctx.scratch.join(format!(
        "{}-{}-{}-{}",
        target.version,
        result.scenario.name(),
        mode.name(),
        result.pods
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let daemon = Daemon::start(
        &ctx.args.pleg,
        &target.endpoint,
        mode,
        &dir,
        &ctx.args.daemon_log_level,
    )
    .await?;
    let outcome = measured(ctx, target, wl, result, length, &daemon).await;
    result.peak_rss_kib = daemon.peak_rss_kib();
    let log = daemon.log.clone();
    if let Err(e) = daemon.stop().await {
        result.notes.push(format!("{e:#}"));
    }
    if ctx.args.daemon_log_level != "warn" {
        let logs = ctx.args.out.join("logs");
        let kept = dir
            .file_name()
            .map(|name| logs.join(format!("{}.log", name.to_string_lossy())));
        if let Some(kept) = kept {
            let copied = std::fs::create_dir_all(&logs).and_then(|()| std::fs::copy(&log, &kept));
            match copied {
                Ok(_) => result.notes.push(format!("pleg's log: {}", kept.display())),
                Err(e) => result
                    .notes
                    .push(format!("pleg's log not kept in {}: {e}", kept.display())),
            }
        }
    }
    outcome.map_err(|e| e.context(format!("pleg's log: {}", daemon::tail(&log))))
}

async fn measured(
    ctx: &Ctx,
    target: &Containerd,
    wl: &Workload,
    result: &mut RunResult,
    length: Duration,
    daemon: &Daemon,
) -> Result<()> {
    let mode = result.mode;
    let subscriber = Subscriber::start(&daemon.socket, &ctx.run_id).await?;
    if mode == Mode::Evented {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let m = daemon.metrics().await?;
            if m.sum("pleg_stream_state", &[("state", "streaming")]) >= 1.0 {
                break;
            }
            if Instant::now() > deadline {
                result
                    .notes
                    .push("the event stream was not streaming within 15 s".into());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Let the first relists pass before the window opens.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    wl.recorder.take();
    let failures_before = wl.failures.load(Ordering::Relaxed);
    let (cd_pids, _) = cpu_pids(target);
    let m0 = daemon.metrics().await?;
    let cpu0 = (
        CpuSample::read(&[daemon.pid]),
        CpuSample::read(&cd_pids),
        CpuSample::read(&procstat::shim_pids(&target.socket)),
    );
    let t0 = Instant::now();
    match result.scenario {
        Scenario::Steady => tokio::time::sleep(length).await,
        Scenario::Churn => {
            let (_tx, pause) = tokio::sync::watch::channel(false);
            wl.churn(length, ctx.plan.rate, pause, Arc::new(AtomicUsize::new(0)))
                .await?;
        }
        Scenario::ShortLived => {
            wl.short_lived(ctx.plan.short_lived, 4.0, Duration::from_millis(2500))
                .await?;
        }
        Scenario::Restart => restart(ctx, target, wl, result, length).await?,
    }
    let window = t0.elapsed();
    let (cd_pids_after, _) = cpu_pids(target);
    let shims_after = procstat::shim_pids(&target.socket);
    let cpu1 = (
        CpuSample::read(&[daemon.pid]),
        CpuSample::read(&cd_pids),
        CpuSample::read(&shims_after),
    );
    let m1 = daemon.metrics().await?;
    result.window_s = window.as_secs_f64();
    result.pleg_cpu_s = cpu1.0.since(&cpu0.0).as_secs_f64();
    result.containerd_cpu_s =
        (cd_pids == cd_pids_after).then(|| cpu1.1.since(&cpu0.1).as_secs_f64());
    result.shims_cpu_s = cpu1.2.since(&cpu0.2).as_secs_f64();
    result.pleg_cpu_wait_ms = cpu1
        .0
        .mean_wait_since(&cpu0.0)
        .map(|d| d.as_secs_f64() * 1e3);
    if let Some(wait) = result.pleg_cpu_wait_ms {
        result.notes.push(format!(
            "pleg's threads waited {wait:.3} ms on average for a CPU each time they woke (schedstat), {} timeslices",
            cpu1.0.slices.saturating_sub(cpu0.0.slices)
        ));
    }
    result.relist = relist_figures(&m0, &m1);

    // Drain: until every owed event is in (or a deadline), then a grace
    // period for late duplicates.
    let relist_mean = Duration::from_secs_f64(result.relist.mean_ms.unwrap_or(0.0) / 1e3);
    let drain = match (result.scenario, mode.period()) {
        (Scenario::Restart, _) => Duration::from_secs(25),
        (_, Some(p)) => p * 3 + Duration::from_secs(3),
        (_, None) => Duration::from_secs(5),
    };
    let deadline = Instant::now() + drain;
    let truth_so_far = wl.recorder.take();
    let mut truth = truth_so_far;
    loop {
        let seen = subscriber.seen.lock().events.clone();
        let (c, _) = analysis::analyse(
            &truth,
            &seen,
            short_bound(mode, relist_mean, None),
            result.outage,
        );
        if c.missed == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        truth.extend(wl.recorder.take());
    }
    tokio::time::sleep(mode.period().unwrap_or_default() + Duration::from_secs(1)).await;
    truth.extend(wl.recorder.take());

    if result.scenario == Scenario::Steady {
        let floor = workload::time_bare_listing(&target.endpoint, ctx.plan.floor_times).await?;
        result.floor_ms = floor.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    }
    let m2 = daemon.metrics().await?;
    let gap = histogram_max(&m0, &m2, "pleg_relist_interval_seconds");
    result.longest_relist_gap_s = gap;
    result.stream_latency_in_pleg = histogram_shares(
        &m0,
        &m1,
        "evented_pleg_connection_latency_seconds",
        &[0.005, 0.01, 0.025],
    );
    if !result.stream_latency_in_pleg.is_empty() {
        result.notes.push(format!(
            "pleg's own histogram (CRI created_at → applied, before the gRPC hop): {} of {:.0} events",
            shares_text(&result.stream_latency_in_pleg),
            result.stream_latency_in_pleg[0].2
        ));
    }
    let split = |name: &str| {
        let shares = histogram_shares(&m0, &m1, name, &[0.001, 0.0025, 0.01, 0.025]);
        let count = m1.sum(&format!("{name}_count"), &[]) - m0.sum(&format!("{name}_count"), &[]);
        let sum = m1.sum(&format!("{name}_sum"), &[]) - m0.sum(&format!("{name}_sum"), &[]);
        (count > 0.0 && !shares.is_empty()).then(|| (sum / count * 1e3, shares))
    };
    result.stream_delivery = split("pleg_stream_delivery_seconds");
    result.stream_apply = split("pleg_stream_apply_seconds");
    if let (Some((dm, ds)), Some((am, ashares))) = (&result.stream_delivery, &result.stream_apply) {
        result.notes.push(format!(
            "split at pleg's stream reader: CRI created_at → held decoded (containerd's sending, the socket, decoding) mean {dm:.2} ms, {}; held → applied (buffer, the core's lock, applying, fan-out) mean {am:.2} ms, {}",
            shares_text_fine(ds),
            shares_text_fine(ashares)
        ));
    }
    if mode.period().is_some()
        && result.scenario != Scenario::Steady
        && let Some(g) = gap
    {
        result.notes.push(format!(
            "longest gap between relist starts ≤ {g} s (its bucket's bound): a missed start of a container that ran (less the outage) for less than that counts as a documented short-lived miss, and so does every event of a container pleg never listed whose whole existence (less the outage) was shorter"
        ));
    }
    let observed = subscriber.finish();
    if let Some(e) = &observed.error {
        result.notes.push(format!("the Watch ended: {e}"));
    }
    let (completeness, latencies) = analysis::analyse(
        &truth,
        &observed.events,
        short_bound(mode, relist_mean, gap),
        result.outage,
    );
    if ctx.args.daemon_log_level != "warn" {
        keep_trace(ctx, result, &truth, &observed.events);
    }
    result.transitions = completeness.owed;
    result.latency = analysis::summarize(&latencies.truth_ms);
    result.latency_live = analysis::summarize(&latencies.truth_live_ms);
    result.own_latency = analysis::summarize(&latencies.own_ms);
    result.runtime_lag = analysis::summarize(&latencies.runtime_lag_ms);
    result.completeness = completeness;
    result.latencies = latencies;
    result.resyncs = observed.resyncs;
    result.driver_failures = wl.failures.load(Ordering::Relaxed) - failures_before;
    if result.driver_failures > 0 {
        let notes = wl.failure_notes.lock().clone();
        result.notes.push(format!(
            "{} driver call(s) failed, e.g. {}",
            result.driver_failures,
            notes.first().cloned().unwrap_or_default()
        ));
    }
    Ok(())
}

/// Churn, with containerd SIGKILLed a third of the way in and brought up
/// again 2 s later. New lifecycles pause over the outage; running ones go on
/// (their containers exit while containerd is down) and their calls retry.
async fn restart(
    ctx: &Ctx,
    target: &Containerd,
    wl: &Workload,
    result: &mut RunResult,
    length: Duration,
) -> Result<()> {
    let (pause_tx, pause) = tokio::sync::watch::channel(false);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let churn = wl.churn(length, ctx.plan.rate, pause, in_flight.clone());
    let outage = async {
        tokio::time::sleep(length / 3).await;
        let _ = pause_tx.send(true);
        let settle = Instant::now() + Duration::from_secs(10);
        while in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let from = workload::wall();
        wl.recorder.set_outage(from, None);
        target.kill().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        target.restart().await?;
        let to = workload::wall();
        wl.recorder.set_outage(from, Some(to));
        let _ = pause_tx.send(false);
        Ok::<_, anyhow::Error>((from, to))
    };
    let (churned, outage) = tokio::join!(churn, outage);
    let (from, to) = outage.context("the containerd restart")?;
    let down = to.duration_since(from).unwrap_or_default();
    result.outage = Some((from, to));
    churned?;
    wl.recorder.clear_outage();
    result.notes.push(format!(
        "containerd SIGKILLed and up again after {:.1} s",
        down.as_secs_f64()
    ));
    Ok(())
}

/// With `--daemon-log-level` other than warn: the run's ground truth and
/// what the subscriber held, one line each in time order, next to the
/// daemon's log (`--out/logs/`), to follow one container through a run.
fn keep_trace(
    ctx: &Ctx,
    result: &mut RunResult,
    truth: &[truth::Truth],
    seen: &[subscriber::Seen],
) {
    let wall = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default()
    };
    let mut lines: Vec<(f64, String)> = truth
        .iter()
        .map(|t| {
            (
                wall(t.call_returned),
                format!(
                    "{:.6} truth {:?} {:?} {} finished_at={:?} exit={:?} outage={}",
                    wall(t.call_returned),
                    t.transition,
                    t.entry,
                    t.id,
                    t.finished_at.map(wall),
                    t.exit_code,
                    t.during_outage
                ),
            )
        })
        .collect();
    lines.extend(seen.iter().map(|s| {
        (
            wall(s.held),
            format!(
                "{:.6} held {} {} via {} exit={:?} runtime_time={:?}",
                wall(s.held),
                s.kind,
                s.id,
                s.source.as_str(),
                s.exit_code,
                s.runtime_time.map(wall)
            ),
        )
    }));
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    let text: String = lines.into_iter().map(|(_, l)| l + "\n").collect();
    let logs = ctx.args.out.join("logs");
    let path = logs.join(format!(
        "{}-{}-{}-{}.trace",
        result.version,
        result.scenario.name(),
        result.mode.name(),
        result.pods
    ));
    match std::fs::create_dir_all(&logs).and_then(|()| std::fs::write(&path, text)) {
        Ok(()) => result.notes.push(format!("trace: {}", path.display())),
        Err(e) => result
            .notes
            .push(format!("trace not kept in {}: {e}", path.display())),
    }
}

fn relist_figures(m0: &Metrics, m1: &Metrics) -> RelistFigures {
    let delta = |name: &str, labels: &[(&str, &str)]| m1.sum(name, labels) - m0.sum(name, labels);
    let relists = delta("pleg_relist_duration_seconds_count", &[]);
    let sum = delta("pleg_relist_duration_seconds_sum", &[]);
    let rpc_count = delta(
        "pleg_runtime_operation_duration_seconds_count",
        &[("operation", "ListPods")],
    );
    let rpc_sum = delta(
        "pleg_runtime_operation_duration_seconds_sum",
        &[("operation", "ListPods")],
    );
    let per = |s: f64, n: f64| (n > 0.0).then(|| s / n * 1e3);
    let mean_ms = per(sum, relists);
    let rpc_ms = per(rpc_sum, rpc_count);
    // A split of pleg's own, if the daemon exports one.
    let own_name = "pleg_relist_own_duration_seconds";
    let (own_ms, own_source) = if m1.has(&format!("{own_name}_sum")) {
        (
            per(
                delta(&format!("{own_name}_sum"), &[]),
                delta(&format!("{own_name}_count"), &[]),
            ),
            format!("{own_name} (pleg's own split)"),
        )
    } else {
        (
            match (mean_ms, rpc_ms) {
                (Some(a), Some(b)) => Some((a - b).max(0.0)),
                _ => None,
            },
            "pleg_relist_duration_seconds minus pleg_runtime_operation_duration_seconds{operation=\"ListPods\"}".into(),
        )
    };
    let by0 = m0.by_label("pleg_cri_requests_total", "method");
    let by1 = m1.by_label("pleg_cri_requests_total", "method");
    let cri_by_method: std::collections::BTreeMap<String, f64> = by1
        .iter()
        .map(|(k, v)| (k.clone(), v - by0.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    RelistFigures {
        relists,
        mean_ms,
        rpc_ms,
        own_ms,
        own_source,
        cri_calls: cri_by_method.values().sum(),
        cri_by_method,
    }
}
