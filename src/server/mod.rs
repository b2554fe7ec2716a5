//! What the `pleg run` daemon serves: the health probe and Prometheus
//! metrics over HTTP ([`http`]), and the subscription API over gRPC on a
//! unix socket ([`grpc`]). Both read one [`Pleg`]; neither changes it.

use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::Pleg;

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
        }
    }

    /// The metric families.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// One named health check and its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// `pleg`, `runtime`, `stream` or `generator`.
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

impl Daemon {
    /// The checks a probe runs, in a stable order.
    pub fn checks(&self, probe: Probe) -> Vec<Check> {
        let pleg = &self.pleg;
        let stats = pleg.stats();
        let generator = Check {
            name: "generator",
            failure: (!pleg.is_running()).then(|| "the relisting loop is not running".to_string()),
            detail: "relisting loop running".into(),
        };
        let relist = Check {
            name: "pleg",
            failure: pleg.healthy().err().map(|e| e.to_string()),
            detail: format!(
                "last relist within {}",
                crate::duration::format(pleg.relist_duration().relist_threshold)
            ),
        };
        let runtime = Check {
            name: "runtime",
            failure: stats.last_error.clone(),
            detail: format!("{} answers", self.runtime_endpoint),
        };
        let status = pleg.stream_status();
        let stream = Check {
            name: "stream",
            failure: None,
            detail: format!(
                "{} mode, stream {}",
                status.mode.as_str(),
                status.state.as_str()
            ),
        };
        match probe {
            Probe::Health => vec![relist, runtime, stream],
            Probe::Live => vec![generator],
            Probe::Ready => vec![relist, runtime],
        }
    }
}
