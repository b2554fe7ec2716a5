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
//!
//! # Limits
//! A request's headers must arrive within 10 s, and at most 256 connections
//! are open; at the cap the oldest idle connection makes room, so that a
//! probe keeps being answered while someone holds connections open
//! ([`HttpLimits`]).
//!
//! # Layout
//! This file binds and routes; `connections.rs` accepts and limits,
//! `probes.rs` renders the probes, `metrics.rs` the Prometheus exposition.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use super::{Daemon, Probe};

mod connections;
mod metrics;
mod probes;

pub use connections::{DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS, HttpLimits};

pub(crate) use metrics::sanitize_prefix;
pub use metrics::{metrics_prefix_is_valid, render_metrics};
pub use probes::{ProbeOptions, render_check, render_probe};

use probes::probe_name;

/// Content type of probe answers and error pages.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Content type of `/metrics`: the Prometheus text format, version 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the health and metrics listener could not be opened. Every message
/// names the address.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
///
/// # Errors
/// A [`BindError`] naming the address: not `host:port`, in use, no permission, or not an address of this machine.
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

/// Serves the probes and `/metrics` on `listener` under the default
/// [`HttpLimits`] until `shutdown` completes, then lets requests in flight
/// finish.
///
/// # Errors
/// The listener failed.
pub async fn serve(
    daemon: Daemon,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with(daemon, listener, HttpLimits::default(), shutdown).await
}

/// Serves the probes and `/metrics` on `listener` under `limits` (a
/// deadline for a request's headers, a cap on open connections; see
/// [`HttpLimits`]) until `shutdown` completes, then lets requests in flight
/// finish.
///
/// # Errors
/// The listener failed.
pub async fn serve_with(
    daemon: Daemon,
    listener: TcpListener,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(
            %addr,
            header_read_timeout = ?limits.header_read_timeout,
            max_connections = limits.max_connections,
            "serving /healthz, /livez, /readyz and /metrics"
        );
    }
    let metrics = daemon.metrics().clone();
    connections::serve_with(router(daemon), listener, limits, metrics, shutdown).await
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
