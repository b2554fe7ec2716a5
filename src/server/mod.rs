//! What the `pleg run` daemon serves: the health probe and Prometheus
//! metrics over HTTP ([`http`]), and the subscription API over gRPC on a
//! unix socket ([`grpc`]). Both read one [`Pleg`]; neither changes it.

use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::Pleg;
use crate::hub::Delivery;
use crate::metrics::ServerMetrics;
use crate::model::PodStatus;
use crate::phase::{CrashLoopRule, CrashLoops, PodHealth};

pub mod grpc;
pub mod http;

/// What the servers read. Cheap to clone.
#[derive(Clone)]
pub struct Daemon {
    /// The generator.
    pub pleg: Pleg,
    /// The runtime endpoint, as configured (for health messages).
    pub runtime_endpoint: String,
    /// Every metric family, registered once with its prefix.
    registry: Arc<Registry>,
    /// The servers' own figures, registered in `registry`.
    metrics: ServerMetrics,
    /// Every pod's failed exits, to tell crash loops in the health the
    /// servers answer with (fed by [`Daemon::track_crash_loops`]).
    crash_loops: Arc<Mutex<CrashLoops>>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("pleg", &self.pleg)
            .field("runtime_endpoint", &self.runtime_endpoint)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// The daemon over `pleg`. Every metric name gets `metrics_prefix`
    /// (empty by default; `kubelet_` gives the kubelet's full names); a CLI
    /// checks it with [`http::metrics_prefix_is_valid`] first, and invalid
    /// characters are replaced with `_`.
    pub fn new(pleg: Pleg, runtime_endpoint: impl Into<String>, metrics_prefix: &str) -> Self {
        let mut registry = Registry::default();
        let prefix = http::sanitize_prefix(metrics_prefix);
        pleg.register_metrics(&mut registry, &prefix);
        let metrics = ServerMetrics::default();
        metrics.register(&mut registry, &prefix);
        // The process's own, not the generator's: the daemon's tokio tasks.
        registry.register(
            format!("{prefix}pleg_tokio_alive_tasks"),
            "Tasks alive in the daemon's tokio runtime, read at scrape time",
            crate::metrics::TokioAliveTasks,
        );
        Daemon {
            pleg,
            runtime_endpoint: runtime_endpoint.into(),
            registry: Arc::new(registry),
            metrics,
            crash_loops: Arc::new(Mutex::new(CrashLoops::default())),
        }
    }

    /// Tells crash loops by this rule (3 failed exits within 5 minutes by
    /// default) from then on; what was noted is forgotten.
    #[must_use]
    pub fn with_crash_loop_rule(self, rule: CrashLoopRule) -> Self {
        *self.crash_loops.lock() = CrashLoops::new(rule);
        self
    }

    /// A pod's phase and health as the servers answer them: the status's
    /// own ([`PodHealth::of`]), `Failed` (`CrashLoop`) while one of its
    /// containers crash-loops.
    pub fn health(&self, status: &PodStatus) -> PodHealth {
        let now = self.pleg.clock().now();
        self.crash_loops.lock().health(status, now)
    }

    /// Follows every pod's deaths, for [`Daemon::health`], until `stop`:
    /// it subscribes, then seeds itself from what the cache holds (the
    /// earlier attempts a runtime keeps), and seeds again after any gap.
    ///
    /// # Errors
    /// Outside a tokio runtime.
    pub fn track_crash_loops(
        &self,
        stop: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, crate::NoTokioRuntime> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| crate::NoTokioRuntime)?;
        let mut subscription = self.pleg.subscribe();
        let loops = Arc::clone(&self.crash_loops);
        let pleg = self.pleg.clone();
        let seed = move |loops: &Mutex<CrashLoops>| {
            let entries = pleg.cache().entries();
            let mut loops = loops.lock();
            for entry in &entries {
                loops.seed(&entry.status);
            }
        };
        seed(&loops);
        let clock = Arc::clone(self.pleg.clock());
        Ok(handle.spawn(async move {
            // Pods that stopped failing are forgotten after the window.
            let mut expire = tokio::time::interval(std::time::Duration::from_secs(60));
            expire.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = expire.tick() => loops.lock().expire(clock.now()),
                    delivery = subscription.recv() => match delivery {
                        Some(Delivery::Event(event)) => loops.lock().observe(&event),
                        Some(Delivery::Resync { .. }) => seed(&loops),
                        // Never asked for here.
                        Some(Delivery::Initial(_) | Delivery::Synced(_)) => {}
                        None => return,
                    },
                }
            }
        }))
    }

    /// The servers' own figures (connections, dropped log lines).
    pub fn metrics(&self) -> &ServerMetrics {
        &self.metrics
    }

    /// The metric families.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// One named health check and its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// `pleg`, `runtime`, `stream`, `pods` or `generator`.
    pub name: &'static str,
    /// `None` when it passes; otherwise why it fails.
    pub failure: Option<String>,
    /// A short description when it passes (shown in verbose output).
    pub detail: String,
}

impl Check {
    /// Whether the check passes.
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }

    /// The kubelet-style line: `[+]pleg ok` or `[-]pleg failed: reason`.
    pub fn line(&self) -> String {
        match &self.failure {
            None => format!("[+]{} ok", self.name),
            Some(reason) => format!("[-]{} failed: {reason}", self.name),
        }
    }
}

/// Which probe is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Probe {
    /// `/healthz`: every check, like the kubelet's.
    Health,
    /// `/livez`: the process works: its relisting loop (and, in evented
    /// mode, its stream task) runs. A runtime outage does not fail it, since
    /// restarting pleg would not help.
    Live,
    /// `/readyz`: pleg can serve subscribers with current data: it relisted
    /// successfully within the threshold and the runtime answers.
    Ready,
}

/// How far back stream gaps count against the `stream` check.
pub const GAP_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// Pods named in the `pods` check, at most.
const PODS_NAMED: usize = 5;

impl Daemon {
    /// The checks a probe runs, in a stable order.
    pub fn checks(&self, probe: Probe) -> Vec<Check> {
        let pleg = &self.pleg;
        let stats = pleg.stats();
        let now = tokio::time::Instant::now();
        let threshold = pleg.relist_duration().relist_threshold;
        let generator = Check {
            name: "generator",
            failure: (!pleg.is_running()).then(|| "the relisting loop is not running".to_string()),
            detail: "relisting loop running".into(),
        };
        let relist = Check {
            name: "pleg",
            failure: pleg.healthy().err().map(|e| e.to_string()),
            detail: format!("last relist within {}", crate::duration::format(threshold)),
        };
        let runtime = Check {
            name: "runtime",
            failure: self.runtime_failure(stats.last_error.as_deref(), threshold, now),
            detail: format!("{} answers", self.runtime_endpoint),
        };
        let stream = self.stream_check(now);
        let pods = self.pods_check(threshold, now);
        match probe {
            Probe::Health => vec![relist, runtime, stream, pods],
            Probe::Live => vec![generator],
            Probe::Ready => vec![relist, runtime],
        }
    }

    /// Why the runtime fails its check: the last relist's error, or a
    /// silence longer than the threshold while pleg waits on it.
    fn runtime_failure(
        &self,
        last_error: Option<&str>,
        threshold: std::time::Duration,
        now: tokio::time::Instant,
    ) -> Option<String> {
        if let Some(silence) = self.pleg.runtime_liveness().silence()
            && silence.duration(now) > threshold
        {
            let how = if silence.pending {
                "pending"
            } else {
                "unanswered"
            };
            let last = last_error.map_or_else(String::new, |e| format!("; last error: {e}"));
            return Some(format!(
                "runtime {} has not answered for {} ({} {how}; threshold is {}){last}",
                self.runtime_endpoint,
                crate::duration::format(silence.duration(now)),
                silence.operation.as_str(),
                crate::duration::format(threshold),
            ));
        }
        last_error.map(str::to_string)
    }

    /// The event stream: confirmed by an answer of the runtime, and not
    /// losing events to another consumer.
    fn stream_check(&self, now: tokio::time::Instant) -> Check {
        let pleg = &self.pleg;
        let status = pleg.stream_status();
        let detail = format!(
            "{} mode, stream {}",
            status.mode.as_str(),
            status.state.as_str()
        );
        let mut failure = None;
        if pleg.config().mode == crate::Mode::Evented {
            let (gaps, last) = pleg.recent_stream_gaps(GAP_WINDOW);
            if status.state == crate::StreamState::Streaming
                && pleg.runtime_liveness().last_answer().is_none()
            {
                failure = Some(format!(
                    "the event stream to {} is not confirmed: the runtime has never answered",
                    self.runtime_endpoint
                ));
            } else if gaps > 0 {
                let ago = last.map_or_else(String::new, |at| {
                    format!(
                        ", the last {} ago",
                        crate::duration::format(now.saturating_duration_since(at))
                    )
                });
                failure = Some(format!(
                    "the runtime's event stream lost events {gaps} times in the last {}{ago}: another consumer of the stream takes some of them (containerd 1.7 gives each event to one stream only: another pleg, kubelet with evented PLEG, or crictl events?); relists recover the state and subscribers get a Resync",
                    crate::duration::format(GAP_WINDOW),
                ));
            }
        }
        Check {
            name: "stream",
            failure,
            detail,
        }
    }

    /// Pods whose status fetches have failed for longer than the
    /// threshold: their events are held back.
    fn pods_check(&self, threshold: std::time::Duration, now: tokio::time::Instant) -> Check {
        let failing = self.pleg.failing_pods();
        let stuck: Vec<_> = failing
            .iter()
            .filter(|p| now.saturating_duration_since(p.since) > threshold)
            .collect();
        let failure = (!stuck.is_empty()).then(|| {
            let named: Vec<String> = stuck
                .iter()
                .take(PODS_NAMED)
                .map(|p| {
                    format!(
                        "{}/{} ({}) for {}: {}",
                        p.meta.namespace,
                        p.meta.name,
                        p.meta.uid,
                        crate::duration::format(now.saturating_duration_since(p.since)),
                        p.error
                    )
                })
                .collect();
            let more = stuck.len().saturating_sub(PODS_NAMED);
            let more = if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            };
            format!(
                "{} pods' status fetches have failed for longer than {}, holding their events back: {}{more}",
                stuck.len(),
                crate::duration::format(threshold),
                named.join("; ")
            )
        });
        Check {
            name: "pods",
            failure,
            detail: if failing.is_empty() {
                "every pod's status fetch works".into()
            } else {
                format!(
                    "{} pods' status fetches failing, none for longer than the threshold",
                    failing.len()
                )
            },
        }
    }
}
