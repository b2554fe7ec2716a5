//! Reaching a CRI runtime: the endpoint (`unix:///path` or a bare path, as
//! crictl takes it), the configuration, and connecting, which asks
//! `Version` and tells a missing socket, a file that is not one, a socket
//! nobody listens on, a peer that is not a CRI v1 runtime and a runtime of
//! another API version apart ([`ConnectError`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::sync::OnceCell;
use tonic::transport::Endpoint;

use super::{
    CRI_API_VERSION, CriRuntime, DEFAULT_ENDPOINT, DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_REQUEST_TIMEOUT, RpcFailure, describe_status,
};
use crate::backoff::Backoff;
use crate::duration::GoDuration;
use crate::runtime::RuntimeStats;

/// How to reach a CRI runtime.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CriConfig {
    /// `unix:///path/to/socket` or a bare path, like crictl's `--runtime-endpoint`.
    pub endpoint: String,
    /// Bound on every RPC (a stop adds its grace period).
    pub request_timeout: Duration,
    /// Bound on establishing a connection and on the `Version` handshake.
    pub connect_timeout: Duration,
    /// Largest message accepted from the runtime.
    pub max_message_size: usize,
    /// Interval of HTTP/2 keep-alive pings.
    pub keepalive_interval: Duration,
    /// How long a keep-alive ping may go unanswered before the connection is
    /// considered dead.
    pub keepalive_timeout: Duration,
}

impl Default for CriConfig {
    fn default() -> Self {
        CriConfig {
            endpoint: DEFAULT_ENDPOINT.to_string(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: Duration::from_secs(10),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

impl CriConfig {
    /// The defaults, for this endpoint.
    pub fn new(endpoint: impl Into<String>) -> Self {
        CriConfig {
            endpoint: endpoint.into(),
            ..CriConfig::default()
        }
    }

    /// Sets the bound on every RPC.
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the bound on connecting and on the `Version` handshake.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the largest message accepted from the runtime.
    #[must_use]
    pub fn with_max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets the HTTP/2 keep-alive interval and timeout.
    #[must_use]
    pub fn with_keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keepalive_interval = interval;
        self.keepalive_timeout = timeout;
        self
    }
}

/// A parsed runtime endpoint: a unix socket path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeEndpoint {
    path: PathBuf,
}

impl RuntimeEndpoint {
    /// Parses `unix:///path`, `unix:path` or a bare path. Relative paths are
    /// taken from the current directory.
    ///
    /// # Errors
    /// [`ConnectError::InvalidEndpoint`] for an empty endpoint, another scheme than `unix`, or no socket path.
    pub fn parse(endpoint: &str) -> Result<Self, ConnectError> {
        let invalid = |reason: &str| ConnectError::InvalidEndpoint {
            endpoint: endpoint.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = endpoint.trim();
        if trimmed.is_empty() {
            return Err(invalid("it is empty"));
        }
        let path = if let Some(rest) = trimmed.strip_prefix("unix://") {
            rest
        } else if let Some(rest) = trimmed.strip_prefix("unix:") {
            rest
        } else if let Some((scheme, _)) = trimmed.split_once("://") {
            return Err(invalid(&format!(
                "scheme {scheme}:// is not supported; pleg talks to the runtime over a unix socket (unix:///path or a bare path)"
            )));
        } else {
            trimmed
        };
        if path.is_empty() {
            return Err(invalid("it names no socket path"));
        }
        let path = Path::new(path);
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| invalid(&format!("relative path and no current directory: {e}")))?
                .join(path)
        };
        Ok(RuntimeEndpoint { path })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether something exists at the socket path.
    pub(super) fn exists(&self) -> bool {
        self.path.exists()
    }
}

impl std::fmt::Display for RuntimeEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unix://{}", self.path.display())
    }
}

/// Why a runtime could not be connected to.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The endpoint is not something we can connect to.
    #[error("runtime endpoint {endpoint:?} is invalid: {reason}")]
    InvalidEndpoint {
        /// As given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing exists at the socket path (the runtime is not running yet?).
    #[error("runtime endpoint {endpoint}: no such socket")]
    NoSocket {
        /// The endpoint.
        endpoint: String,
    },
    /// Something other than a socket exists at the path.
    #[error("runtime endpoint {endpoint}: {path} exists but is not a unix socket")]
    NotASocket {
        /// The endpoint.
        endpoint: String,
        /// The path.
        path: String,
    },
    /// The socket exists but the connection failed.
    #[error("runtime endpoint {endpoint}: cannot connect: {message}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// What the connection attempt said.
        message: String,
    },
    /// Something answers, but not as a CRI v1 runtime service.
    #[error(
        "runtime endpoint {endpoint} is not a CRI v1 runtime: expected an answer to runtime.v1.RuntimeService/Version, got {message}"
    )]
    NotCri {
        /// The endpoint.
        endpoint: String,
        /// What came back.
        message: String,
    },
    /// A CRI runtime that speaks another API version.
    #[error(
        "runtime endpoint {endpoint}: expected CRI API {CRI_API_VERSION}, but {runtime} speaks {api_version:?}"
    )]
    UnsupportedApi {
        /// The endpoint.
        endpoint: String,
        /// Runtime name and version.
        runtime: String,
        /// The API version it reported.
        api_version: String,
    },
    /// No answer to `Version` in time.
    #[error(
        "runtime endpoint {endpoint}: no answer to runtime.v1.RuntimeService/Version within {}; is it a CRI runtime?", GoDuration(*after)
    )]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// The time waited.
        after: Duration,
    },
}

impl ConnectError {
    /// The gRPC code that fits: `Unavailable` for a runtime that is not
    /// there, `DeadlineExceeded` for one that does not answer, and so on.
    pub fn code(&self) -> tonic::Code {
        match self {
            ConnectError::InvalidEndpoint { .. } => tonic::Code::InvalidArgument,
            ConnectError::NoSocket { .. }
            | ConnectError::NotASocket { .. }
            | ConnectError::Unreachable { .. } => tonic::Code::Unavailable,
            ConnectError::NotCri { .. } => tonic::Code::Unimplemented,
            ConnectError::UnsupportedApi { .. } => tonic::Code::FailedPrecondition,
            ConnectError::Timeout { .. } => tonic::Code::DeadlineExceeded,
        }
    }

    /// Whether trying again later may succeed (everything but a malformed
    /// endpoint: a runtime may start, restart or be replaced).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ConnectError::InvalidEndpoint { .. })
    }
}

/// What the runtime said about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeVersion {
    /// For example `containerd`.
    pub runtime_name: String,
    /// For example `v1.7.24`.
    pub runtime_version: String,
    /// For example `v1`.
    pub runtime_api_version: String,
}

impl std::fmt::Display for RuntimeVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} (CRI {})",
            self.runtime_name, self.runtime_version, self.runtime_api_version
        )
    }
}

impl CriRuntime {
    /// Connects and checks that the endpoint is a CRI v1 runtime (one
    /// `Version` call). Fails at once with a clear error otherwise.
    ///
    /// # Errors
    /// Why the endpoint is not a CRI v1 runtime that answers: see [`ConnectError`].
    pub async fn connect(config: CriConfig) -> Result<Arc<CriRuntime>, ConnectError> {
        let runtime = Self::connect_lazy(config)?;
        runtime.verify().await?;
        Ok(runtime)
    }

    /// Like [`connect`](Self::connect), but keeps trying, with backoff from
    /// 100 ms to 5 s, while the error may go away (the socket is missing, the
    /// runtime does not answer yet). Each failure is logged. Returns at once
    /// for a malformed endpoint.
    ///
    /// # Errors
    /// Only an error retrying cannot cure: a malformed endpoint.
    pub async fn connect_retrying(config: CriConfig) -> Result<Arc<CriRuntime>, ConnectError> {
        let runtime = Self::connect_lazy(config)?;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match runtime.verify().await {
                Ok(_) => return Ok(runtime),
                Err(e) if e.is_retryable() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        error = ?e.to_string(),
                        attempt = backoff.failures(),
                        retry_in = %GoDuration(delay),
                        "runtime not available yet; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A runtime that connects on first use; its first call also checks the
    /// version. Only a malformed endpoint fails here. Must be called inside a
    /// tokio runtime.
    ///
    /// # Errors
    /// A malformed endpoint.
    // By value like `connect` and `connect_retrying`, which hand it on.
    #[allow(clippy::needless_pass_by_value)]
    pub fn connect_lazy(config: CriConfig) -> Result<Arc<CriRuntime>, ConnectError> {
        let endpoint = RuntimeEndpoint::parse(&config.endpoint)?;
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| ConnectError::InvalidEndpoint {
                endpoint: config.endpoint.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(config.connect_timeout)
            .http2_keep_alive_interval(config.keepalive_interval)
            .keep_alive_timeout(config.keepalive_timeout)
            // Only while a call (the event stream) is open: grpc-go servers
            // allow pings without an open stream once per two hours.
            .keep_alive_while_idle(false)
            .connect_lazy();
        let listing = super::listed::ListingClient::new(channel.clone(), config.max_message_size);
        let client = RuntimeServiceClient::new(channel)
            .max_decoding_message_size(config.max_message_size)
            .max_encoding_message_size(config.max_message_size);
        Ok(Arc::new(CriRuntime {
            endpoint,
            client,
            listing,
            last_listing: parking_lot::Mutex::default(),
            request_timeout: config.request_timeout,
            connect_timeout: config.connect_timeout,
            version: OnceCell::new(),
            stats: Arc::new(RuntimeStats::default()),
        }))
    }

    /// Asks the runtime's version (once) and checks that it speaks CRI v1.
    ///
    /// # Errors
    /// Why the endpoint is not a CRI v1 runtime that answers: see [`ConnectError`].
    pub async fn verify(&self) -> Result<&RuntimeVersion, ConnectError> {
        self.version.get_or_try_init(|| self.ask_version()).await
    }

    async fn ask_version(&self) -> Result<RuntimeVersion, ConnectError> {
        let endpoint = self.endpoint.to_string();
        match std::fs::metadata(self.endpoint.path()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConnectError::NoSocket { endpoint });
            }
            Err(e) => {
                return Err(ConnectError::Unreachable {
                    endpoint,
                    message: e.to_string(),
                });
            }
            Ok(meta) => {
                use std::os::unix::fs::FileTypeExt;
                if !meta.file_type().is_socket() {
                    return Err(ConnectError::NotASocket {
                        endpoint,
                        path: self.endpoint.path().display().to_string(),
                    });
                }
            }
        }
        let request = cri::VersionRequest {
            version: CRI_API_VERSION.to_string(),
        };
        let answer = self
            .rpc(
                super::CriMethod::Version,
                self.connect_timeout,
                |mut c| async move { c.version(request).await },
            )
            .await;
        let v = match answer {
            Ok(v) => v,
            Err(RpcFailure::Timeout(after)) => {
                return Err(ConnectError::Timeout { endpoint, after });
            }
            Err(RpcFailure::Status(status)) => {
                use std::io::ErrorKind;
                let message = describe_status(&status);
                return Err(match io_error_kind(&status) {
                    Some(ErrorKind::NotFound) => ConnectError::NoSocket { endpoint },
                    // Could not connect at all.
                    Some(
                        ErrorKind::ConnectionRefused
                        | ErrorKind::PermissionDenied
                        | ErrorKind::AddrNotAvailable
                        | ErrorKind::TimedOut,
                    ) => ConnectError::Unreachable { endpoint, message },
                    // Connected, but the peer hung up on the HTTP/2 handshake
                    // or answered something that is not gRPC.
                    _ => ConnectError::NotCri { endpoint, message },
                });
            }
        };
        let version = RuntimeVersion {
            runtime_name: v.runtime_name,
            runtime_version: v.runtime_version,
            runtime_api_version: v.runtime_api_version,
        };
        let api = version.runtime_api_version.as_str();
        if !(api == CRI_API_VERSION || api.starts_with("v1.")) {
            return Err(ConnectError::UnsupportedApi {
                endpoint,
                runtime: format!("{} {}", version.runtime_name, version.runtime_version),
                api_version: version.runtime_api_version,
            });
        }
        tracing::info!(endpoint = %self.endpoint, runtime = ?version.to_string(), "connected to the container runtime");
        Ok(version)
    }
}

/// The kind of the first I/O error behind a failed call, if any: it tells a
/// missing or refusing socket from a peer that speaks something else.
fn io_error_kind(status: &tonic::Status) -> Option<std::io::ErrorKind> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_like_crictl() {
        let parse = |s: &str| RuntimeEndpoint::parse(s).map(|e| e.path().to_path_buf());
        assert_eq!(
            parse("unix:///run/x.sock").ok(),
            Some(PathBuf::from("/run/x.sock"))
        );
        assert_eq!(
            parse("/run/x.sock").ok(),
            Some(PathBuf::from("/run/x.sock"))
        );
        assert_eq!(
            parse("unix:/run/x.sock").ok(),
            Some(PathBuf::from("/run/x.sock"))
        );
        assert!(parse("relative.sock").is_ok_and(|p| p.is_absolute()));
        let err = parse("tcp://localhost:1234").err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("tcp://") && e.contains("unix socket")),
            "{err:?}"
        );
        assert!(parse("").is_err());
        assert!(parse("unix://").is_err());
        assert_eq!(
            RuntimeEndpoint::parse("/a/b.sock")
                .map(|e| e.to_string())
                .ok(),
            Some("unix:///a/b.sock".to_string())
        );
    }
}
