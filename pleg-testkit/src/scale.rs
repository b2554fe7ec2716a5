//! Scale measurements: what a `pleg run` daemon costs at N containers.
//!
//! [`measure`] serves N containers from the [`FakeCriServer`] in this
//! process and runs the given `pleg` binary as a child process against it,
//! so that the daemon's memory is its own (the approach of
//! `tests/faults_grpc.rs`, `measure_…`). Once the first relist (which fetches
//! the status of every pod) is done, it samples several no-change relists
//! from the daemon's `/metrics`, then reads the child's `VmRSS` and `VmHWM`.
//!
//! # Time
//! Relist time comes from `pleg_relist_duration_seconds`; the runtime's
//! share from `pleg_cri_request_duration_seconds` of `ListPodSandbox` and
//! `ListContainers` (the calls and tonic's decoding of their answers); pleg's
//! own time is the difference (turning the answers into a `Listing`, the
//! diff, the cache, the counts). Means are over the sampled relists; the
//! median is of the relists seen one by one. This is wall time on whatever
//! else the machine runs: the figures are for comparison, not assertion.
//!
//! # Memory
//! The first relist is the peak (`VmHWM`): every pod's status is fetched and
//! cached, and every event is published. `VmRSS` is taken after the sampled
//! relists. [`ScaleFigures::compared_with`] a run at no containers gives the
//! growth per container.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_cri::v1::{Container, ContainerState, PodSandbox, PodSandboxState};
use pleg::runtime::fake::runtime_id;

use crate::fake_cri::{FakeCriServer, container_in, sandbox};

/// How often the daemon relists during a measurement.
const RELIST_PERIOD: &str = "1s";

/// The no-change relists sampled once the first relist is done.
const SAMPLED_RELISTS: u64 = 5;

/// How often `/metrics` is read while waiting.
const POLL: Duration = Duration::from_millis(50);

/// The longest wait for the first relist: at 50,000 containers its status
/// calls take minutes.
const FIRST_RELIST_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What [`measure`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleFigures {
    /// Containers the fake CRI server listed (sandboxes not counted).
    pub containers: usize,
    /// Pods (one sandbox each).
    pub pods: usize,
    /// No-change relists sampled.
    pub relists: u64,
    /// Mean duration of a sampled relist, in seconds.
    pub relist_seconds_mean: f64,
    /// Median duration of the sampled relists seen one by one, in seconds
    /// (the mean when none was seen alone).
    pub relist_seconds_median: f64,
    /// Mean time per relist in the two listing RPCs, answer decoding
    /// included, in seconds.
    pub rpc_seconds: f64,
    /// Mean time per relist outside those RPCs (`relist_seconds_mean` less
    /// `rpc_seconds`), in seconds.
    pub own_seconds: f64,
    /// The daemon's resident set after the sampled relists (`VmRSS`).
    pub rss_bytes: u64,
    /// The daemon's peak resident set (`VmHWM`).
    pub hwm_bytes: u64,
    /// Growth of `rss_bytes` per container over a baseline run (see
    /// [`compared_with`](Self::compared_with)); `None` until compared.
    pub rss_bytes_per_container: Option<f64>,
}

impl ScaleFigures {
    /// Fills [`rss_bytes_per_container`](Self::rss_bytes_per_container)
    /// from a run with fewer containers, typically none.
    #[must_use]
    pub fn compared_with(mut self, baseline: &ScaleFigures) -> Self {
        let containers = self.containers.saturating_sub(baseline.containers);
        if containers > 0 {
            #[allow(clippy::cast_precision_loss)]
            let growth = (self.rss_bytes as f64 - baseline.rss_bytes as f64) / containers as f64;
            self.rss_bytes_per_container = Some(growth);
        }
        self
    }
}

/// Runs `pleg_bin run` (generic mode, relisting every second, health and
/// metrics on a free local port, its gRPC socket in a temporary directory)
/// against a fake CRI server listing `containers` running containers in
/// pods of `containers_per_pod` (the last pod takes the remainder), waits
/// for its first relist and five more (`SAMPLED_RELISTS`), and returns what they
/// cost. IDs are 64 hex digits and containers carry the kubelet's labels,
/// as a real runtime lists them. The daemon is killed before this returns.
///
/// `MALLOC_*` variables of this process reach the daemon (glibc's tuning,
/// which pleg otherwise sets itself), and so does `PLEG_REPLAY_EVENTS` (the
/// replay ring's size, to weigh the ring); nothing else of the environment
/// does.
///
/// # Errors
/// The fake CRI server cannot start, the daemon cannot start or exits, or
/// its metrics do not show the relists in time.
///
/// ```no_run
/// # async fn run() -> anyhow::Result<()> {
/// let pleg = std::path::Path::new("target/release/pleg");
/// let baseline = pleg_testkit::scale::measure(pleg, 0, 4).await?;
/// let figures = pleg_testkit::scale::measure(pleg, 10_000, 4)
///     .await?
///     .compared_with(&baseline);
/// println!("{figures:?}");
/// # Ok(())
/// # }
/// ```
pub async fn measure(
    pleg_bin: &Path,
    containers: usize,
    containers_per_pod: usize,
) -> Result<ScaleFigures> {
    let per_pod = containers_per_pod.max(1);
    let server = FakeCriServer::start()
        .await
        .context("starting the fake CRI server")?;
    let pods = populate(&server, containers, per_pod);

    let dir = tempfile::Builder::new()
        .prefix("pleg-scale-")
        .tempdir()
        .context("a temporary directory")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .context("a free port")?;
    let log = std::fs::File::create(dir.path().join("pleg.log")).context("pleg's log file")?;
    let daemon = Daemon(
        Command::new(pleg_bin)
            .env_clear()
            .envs(
                std::env::vars()
                    .filter(|(k, _)| k.starts_with("MALLOC_") || k == "PLEG_REPLAY_EVENTS"),
            )
            .args(["run", "--runtime-endpoint", &server.endpoint()])
            .args(["--mode", "generic", "--relist-period", RELIST_PERIOD])
            .args(["--relist-threshold", "1h"])
            .args(["--health-addr", &format!("127.0.0.1:{port}")])
            .arg("--grpc-socket")
            .arg(dir.path().join("pleg.sock"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} run", pleg_bin.display()))?,
    );
    let metrics = Metrics { port };
    let sampled = sample_relists(&daemon, &metrics)
        .await
        .with_context(|| daemon_log(dir.path()))?;
    let pid = daemon.0.id();
    let rss_bytes = proc_status_bytes(pid, "VmRSS:")?;
    let hwm_bytes = proc_status_bytes(pid, "VmHWM:")?;
    drop(daemon);
    drop(server);
    Ok(ScaleFigures {
        containers,
        pods,
        relists: sampled.relists,
        relist_seconds_mean: sampled.relist_seconds_mean,
        relist_seconds_median: sampled.relist_seconds_median,
        rpc_seconds: sampled.rpc_seconds,
        own_seconds: sampled.relist_seconds_mean - sampled.rpc_seconds,
        rss_bytes,
        hwm_bytes,
        rss_bytes_per_container: None,
    })
}

/// The size on the wire of the `ListContainers` answer the fake CRI server
/// gives when [`measure`] puts `containers` containers in it.
pub fn list_containers_bytes(containers: usize, containers_per_pod: usize) -> usize {
    use prost::Message as _;
    let (_, containers) = workload(containers, containers_per_pod.max(1));
    k8s_cri::v1::ListContainersResponse { containers }.encoded_len()
}

/// Puts [`workload`] into the server and returns the number of pods.
fn populate(server: &FakeCriServer, containers: usize, per_pod: usize) -> usize {
    let (sandboxes, containers) = workload(containers, per_pod);
    let pods = sandboxes.len();
    for sandbox in sandboxes {
        server.put_sandbox(sandbox);
    }
    for container in containers {
        server.put_container(container);
    }
    pods
}

/// `containers` running containers in ready sandboxes, `per_pod` a pod (the
/// last pod takes the remainder).
fn workload(containers: usize, per_pod: usize) -> (Vec<PodSandbox>, Vec<Container>) {
    let pods = containers.div_ceil(per_pod);
    let mut sandboxes = Vec::with_capacity(pods);
    let mut listed = Vec::with_capacity(containers);
    for p in 0..pods {
        let pod = sandbox(
            &runtime_id(p, 0),
            &format!("{p:08x}-0000-4000-8000-{p:012x}"),
            &format!("scale-{p}"),
            &format!("ns-{}", p % 16),
            PodSandboxState::SandboxReady,
        );
        let first = p * per_pod;
        for c in first..containers.min(first + per_pod) {
            listed.push(container_in(
                &pod,
                &runtime_id(p, c - first + 1),
                &format!("app-{}", c - first),
                0,
                ContainerState::ContainerRunning,
            ));
        }
        sandboxes.push(pod);
    }
    (sandboxes, listed)
}

/// A `pleg run` child, killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The end of the daemon's log, for an error.
fn daemon_log(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("pleg.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(10).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!("pleg run's log ends:\n{}", tail.join("\n"))
}

/// The relists seen between the first relist and the last sample.
struct Sampled {
    relists: u64,
    relist_seconds_mean: f64,
    relist_seconds_median: f64,
    rpc_seconds: f64,
}

/// The daemon's `/metrics`.
struct Metrics {
    port: u16,
}

/// The figures of one `/metrics` reading that a relist moves.
#[derive(Clone, Copy, Debug)]
struct Reading {
    relists: f64,
    relist_sum: f64,
    rpc_sum: f64,
}

impl Metrics {
    async fn read(&self) -> Option<Reading> {
        let reply = crate::http::get(format!("127.0.0.1:{}", self.port), "/metrics")
            .await
            .ok()?;
        let body = reply.body;
        let rpc = |method: &str| {
            value(
                &body,
                "pleg_cri_request_duration_seconds_sum",
                &format!("method=\"{method}\""),
            )
            .unwrap_or(0.0)
        };
        Some(Reading {
            relists: value(&body, "pleg_relists_total", "")?,
            relist_sum: value(&body, "pleg_relist_duration_seconds_sum", "")?,
            rpc_sum: rpc("ListPodSandbox") + rpc("ListContainers"),
        })
    }
}

/// The value of the first sample of `name` whose labels contain `labels`.
fn value(body: &str, name: &str, labels: &str) -> Option<f64> {
    body.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (series, number) = rest.rsplit_once(' ')?;
        let plain = series.is_empty();
        let labelled = series.starts_with('{') && series.contains(labels);
        if (plain && labels.is_empty()) || labelled {
            number.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Waits for the first relist and [`SAMPLED_RELISTS`] more.
async fn sample_relists(daemon: &Daemon, metrics: &Metrics) -> Result<Sampled> {
    let pid = daemon.0.id();
    let alive = || Path::new(&format!("/proc/{pid}/status")).exists();
    // The first relist fetches every pod's status; the second may still
    // publish what the first found. Sampling starts after both.
    let start = tokio::time::Instant::now();
    let first = loop {
        if let Some(reading) = metrics.read().await
            && reading.relists >= 2.0
        {
            break reading;
        }
        if !alive() {
            bail!("pleg run (pid {pid}) ended before its first relists");
        }
        if start.elapsed() > FIRST_RELIST_TIMEOUT {
            bail!("pleg run made no two relists in {FIRST_RELIST_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL).await;
    };
    let mut last = first;
    let mut alone = Vec::new();
    #[allow(clippy::cast_precision_loss)]
    let target = first.relists + SAMPLED_RELISTS as f64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60 + 10 * SAMPLED_RELISTS);
    while last.relists < target {
        if tokio::time::Instant::now() > deadline {
            bail!("pleg run made no {SAMPLED_RELISTS} relists in time");
        }
        tokio::time::sleep(POLL).await;
        let Some(reading) = metrics.read().await else {
            continue;
        };
        // A relist seen alone between two readings gives its own duration.
        if (reading.relists - last.relists - 1.0).abs() < f64::EPSILON {
            alone.push(reading.relist_sum - last.relist_sum);
        }
        last = reading;
    }
    let relists = last.relists - first.relists;
    let mean = (last.relist_sum - first.relist_sum) / relists;
    alone.sort_by(f64::total_cmp);
    let median = if alone.is_empty() {
        mean
    } else {
        alone[alone.len() / 2]
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(Sampled {
        relists: relists as u64,
        relist_seconds_mean: mean,
        relist_seconds_median: median,
        rpc_seconds: (last.rpc_sum - first.rpc_sum) / relists,
    })
}

/// A size in `/proc/PID/status` (`VmRSS:`, `VmHWM:`), in bytes.
fn proc_status_bytes(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} line in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values_are_found_by_name_and_label() {
        let body = "# TYPE pleg_relists_total counter\n\
                    pleg_relists_total 7\n\
                    pleg_relists_total_other 9\n\
                    pleg_cri_request_duration_seconds_sum{method=\"ListPodSandbox\"} 0.5\n\
                    pleg_cri_request_duration_seconds_sum{method=\"ListContainers\"} 1.25\n";
        assert_eq!(value(body, "pleg_relists_total", ""), Some(7.0));
        assert_eq!(
            value(
                body,
                "pleg_cri_request_duration_seconds_sum",
                "method=\"ListContainers\""
            ),
            Some(1.25)
        );
        assert_eq!(value(body, "pleg_relist_duration_seconds_sum", ""), None);
    }

    #[test]
    fn a_50000_container_listing_fits_the_cri_message_cap() {
        let bytes = list_containers_bytes(50_000, 4);
        println!("ListContainers of 50,000 containers: {bytes} bytes");
        assert!(bytes > 16 * 1024 * 1024, "{bytes} bytes: the old cap held");
        assert!(bytes < pleg::runtime::cri::DEFAULT_MAX_MESSAGE_SIZE / 2);
    }
}
