//! `pleg run` as a separate process (so its CPU and memory are its own),
//! and its `/metrics`, parsed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How pleg watches the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Mode {
    /// Relisting every second.
    Generic1s,
    /// Relisting every 100 ms.
    Generic100ms,
    /// The runtime's event stream.
    Evented,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Evented, Mode::Generic1s, Mode::Generic100ms];

    /// Short name, for file names and tables.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Generic1s => "generic-1s",
            Mode::Generic100ms => "generic-100ms",
            Mode::Evented => "evented",
        }
    }

    /// The relist period in charge.
    pub fn period(self) -> Option<Duration> {
        match self {
            Mode::Generic1s => Some(Duration::from_secs(1)),
            Mode::Generic100ms => Some(Duration::from_millis(100)),
            Mode::Evented => None,
        }
    }

    fn args(self) -> [&'static str; 4] {
        match self {
            Mode::Generic1s => ["--mode", "generic", "--relist-period", "1s"],
            Mode::Generic100ms => ["--mode", "generic", "--relist-period", "100ms"],
            Mode::Evented => ["--mode", "evented", "--relist-period", "1s"],
        }
    }
}

/// A running `pleg run`.
pub struct Daemon {
    child: Child,
    pub pid: u32,
    pub socket: PathBuf,
    pub health_addr: String,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `pleg run` against `endpoint`, its socket and log in `dir`,
    /// and waits until `/readyz` answers 200 (its first relist is done).
    pub async fn start(
        pleg: &Path,
        endpoint: &str,
        mode: Mode,
        dir: &Path,
        log_level: &str,
    ) -> Result<Daemon> {
        let port = free_port()?;
        let health_addr = format!("127.0.0.1:{port}");
        let socket = dir.join("pleg.sock");
        let log = dir.join("pleg.log");
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("creating the daemon's log {}", log.display()))?;
        let log_err = log_file.try_clone().context("the daemon's log")?;
        let child = Command::new(pleg)
            .arg("run")
            .args(mode.args())
            .args(["--runtime-endpoint", endpoint])
            .args(["--health-addr", &health_addr])
            .arg("--grpc-socket")
            .arg(&socket)
            .args(["--log-level", log_level])
            .stdin(std::process::Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} run", pleg.display()))?;
        let pid = child.id().context("the daemon exited at once")?;
        let mut daemon = Daemon {
            child,
            pid,
            socket,
            health_addr,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                bail!(
                    "pleg run ({}) exited during startup ({status}); its log {}: {}",
                    mode.name(),
                    daemon.log.display(),
                    tail(&daemon.log)
                );
            }
            let ready = pleg_testkit::http::get(&daemon.health_addr, "/readyz")
                .await
                .is_ok_and(|r| r.status == 200);
            if ready && daemon.socket.exists() {
                return Ok(daemon);
            }
            if Instant::now() > deadline {
                bail!(
                    "pleg run ({}) not ready on {} within 30 s; its log {}: {}",
                    mode.name(),
                    daemon.health_addr,
                    daemon.log.display(),
                    tail(&daemon.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its `/metrics`, parsed.
    pub async fn metrics(&self) -> Result<Metrics> {
        let reply = pleg_testkit::http::get(&self.health_addr, "/metrics")
            .await
            .with_context(|| format!("GET http://{}/metrics", self.health_addr))?;
        if reply.status != 200 {
            bail!(
                "GET http://{}/metrics answered {}",
                self.health_addr,
                reply.status
            );
        }
        Ok(Metrics::parse(&reply.body))
    }

    /// Peak resident memory (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        crate::procstat::status_kib(self.pid, "VmHWM")
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub async fn stop(mut self) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid).unwrap_or(i32::MAX));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = self.child.kill().await;
                bail!(
                    "pleg run (pid {}) ignored SIGTERM for 5 s; killed",
                    self.pid
                )
            }
        }
    }
}

fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(listener.local_addr().context("a free port")?.port())
}

/// The last lines of a log file, for an error message.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(6).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// A Prometheus text exposition: every sample by name and labels.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    /// Parses the text format; lines it cannot read are skipped.
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (head, value) = match line.rsplit_once(' ') {
                Some(split) => split,
                None => continue,
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let (name, labels) = match head.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (head, BTreeMap::new()),
            };
            samples.push((name.to_string(), labels, value));
        }
        Metrics { samples }
    }

    /// The sum of the samples called `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Whether a sample of this name exists.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|(n, _, _)| n == name)
    }

    /// The samples called `name`, by the value of label `key`, summed.
    pub fn by_label(&self, name: &str, key: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (n, l, v) in &self.samples {
            if n == name
                && let Some(k) = l.get(key)
            {
                *out.entry(k.clone()).or_insert(0.0) += v;
            }
        }
        out
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(if e == 'n' { '\n' } else { e });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = after.get(end..).unwrap_or("");
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_with_their_labels() {
        let m =
            Metrics::parse("# TYPE x counter\nx{a=\"1\",b=\"q\\\"\"} 3\nx{a=\"2\"} 4\ny_sum 0.5\n");
        assert!((m.sum("x", &[]) - 7.0).abs() < 1e-9);
        assert!((m.sum("x", &[("b", "q\"")]) - 3.0).abs() < 1e-9);
        assert!((m.sum("y_sum", &[]) - 0.5).abs() < 1e-9);
    }
}
