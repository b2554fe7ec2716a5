//! [`Runtime`] over CRI v1, the gRPC API containerd and CRI-O serve on a unix
//! socket. The crictl-style workload driver lives in `pleg-testkit`.
//!
//! This module is the only place that sees CRI protobuf types: listings and
//! statuses are converted into our [`model`](crate::model) here.
//!
//! ## Cost
//! A relist is exactly two RPCs, `ListPodSandbox` and `ListContainers`, both
//! unfiltered (all states). The status of a changed pod is one
//! `PodSandboxStatus` per sandbox of the pod plus one `ContainerStatus` per
//! container of the pod: that is where exit codes, reasons and start and
//! finish times come from. The first call on a lazily connected runtime also
//! asks `Version`, once.
//!
//! ## Identity
//! A pod's UID, name and namespace come from its sandbox's metadata, its
//! labels from the sandbox's labels (of the newest sandbox, when a pod has
//! several). A container belongs to the pod of its `pod_sandbox_id`; a
//! container whose sandbox is not in the sandbox listing (it was created
//! between the two list calls) falls back to the kubelet's
//! `io.kubernetes.pod.uid` label, and without one waits for the next relist.
//!
//! ## Bad data
//! Nothing the runtime sends can panic this module. An enum value we do not
//! know becomes `Unknown` and is counted ([`RuntimeStats::unknown_values`]);
//! a record we cannot use (an empty ID, a sandbox without metadata or UID) is
//! left out and counted ([`RuntimeStats::skipped_records`]).
//!
//! ## Connection
//! Every RPC is bounded by the runtime request timeout (default 2 minutes,
//! the kubelet's `--runtime-request-timeout`). The channel reconnects by
//! itself after the connection drops; the call that noticed the drop fails and
//! the next one connects again. HTTP/2 keep-alive pings notice a dead peer.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::sync::OnceCell;
use tonic::transport::{Channel, Endpoint};

use super::{
    BoxFuture, ContainerEvent, ContainerEventKind, Error, EventStream, Result, Runtime,
    RuntimeStats, SandboxSnapshot,
};
use crate::backoff::Backoff;
use crate::health::go_duration;
use crate::model::{
    Container, ContainerId, ContainerState, Listing, Pod, PodMeta, PodStatus, PodUid,
};

/// The socket containerd serves CRI on by default.
pub const DEFAULT_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";

/// The kubelet's default runtime request timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The largest message accepted from the runtime, as in the kubelet: a node
/// with thousands of containers lists more than gRPC's default 4 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// The HTTP/2 keep-alive interval. containerd (grpc-go's default enforcement
/// policy) tolerates one ping per 5 minutes on a quiet connection and answers
/// more with `GOAWAY too_many_pings`, cutting the event stream; so pleg pings
/// a little less often than that. A runtime that dies closes the unix socket,
/// which is noticed at once; keep-alive is for a peer that hangs.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(330);

/// The CRI API version pleg speaks.
pub const CRI_API_VERSION: &str = "v1";

/// The kubelet's label carrying a container's pod UID.
const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";

/// How to reach a CRI runtime.
#[derive(Clone, Debug)]
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
}

/// A parsed runtime endpoint: a unix socket path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeEndpoint {
    path: PathBuf,
}

impl RuntimeEndpoint {
    /// Parses `unix:///path`, `unix:path` or a bare path. Relative paths are
    /// taken from the current directory.
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
    fn exists(&self) -> bool {
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
        "runtime endpoint {endpoint}: no answer to runtime.v1.RuntimeService/Version within {}; is it a CRI runtime?", go_duration(*after)
    )]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// The time waited.
        after: Duration,
    },
}

impl ConnectError {
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

/// A failed RPC, before it becomes a [`runtime::Error`](Error).
enum RpcFailure {
    Status(tonic::Status),
    Timeout(Duration),
}

/// A CRI v1 runtime on a unix socket.
pub struct CriRuntime {
    endpoint: RuntimeEndpoint,
    client: RuntimeServiceClient<Channel>,
    request_timeout: Duration,
    connect_timeout: Duration,
    version: OnceCell<RuntimeVersion>,
    stats: Arc<RuntimeStats>,
}

impl std::fmt::Debug for CriRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriRuntime")
            .field("endpoint", &self.endpoint.to_string())
            .field("version", &self.version.get())
            .finish_non_exhaustive()
    }
}

impl CriRuntime {
    /// Connects and checks that the endpoint is a CRI v1 runtime (one
    /// `Version` call). Fails at once with a clear error otherwise.
    pub async fn connect(config: CriConfig) -> Result<Arc<CriRuntime>, ConnectError> {
        let runtime = Self::connect_lazy(config)?;
        runtime.verify().await?;
        Ok(runtime)
    }

    /// Like [`connect`](Self::connect), but keeps trying, with backoff from
    /// 100 ms to 5 s, while the error may go away (the socket is missing, the
    /// runtime does not answer yet). Each failure is logged. Returns at once
    /// for a malformed endpoint.
    pub async fn connect_retrying(config: CriConfig) -> Result<Arc<CriRuntime>, ConnectError> {
        let runtime = Self::connect_lazy(config)?;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match runtime.verify().await {
                Ok(_) => return Ok(runtime),
                Err(e) if e.is_retryable() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        error = %e,
                        attempt = backoff.failures(),
                        retry_in = %go_duration(delay),
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
        let client = RuntimeServiceClient::new(channel)
            .max_decoding_message_size(config.max_message_size)
            .max_encoding_message_size(config.max_message_size);
        Ok(Arc::new(CriRuntime {
            endpoint,
            client,
            request_timeout: config.request_timeout,
            connect_timeout: config.connect_timeout,
            version: OnceCell::new(),
            stats: Arc::new(RuntimeStats::default()),
        }))
    }

    /// The endpoint, as `unix:///path`.
    pub fn endpoint(&self) -> &RuntimeEndpoint {
        &self.endpoint
    }

    /// What the runtime said about itself, once a call succeeded.
    pub fn version(&self) -> Option<&RuntimeVersion> {
        self.version.get()
    }

    /// Asks the runtime's version (once) and checks that it speaks CRI v1.
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
            .rpc("Version", self.connect_timeout, |mut c| async move {
                c.version(request).await
            })
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
        tracing::info!(endpoint = %self.endpoint, runtime = %version, "connected to the container runtime");
        Ok(version)
    }

    /// Runs one RPC with a deadline, counting it by method and outcome.
    async fn rpc<T, F, Fut>(
        &self,
        method: &'static str,
        timeout: Duration,
        call: F,
    ) -> std::result::Result<T, RpcFailure>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.stats.count_call(method);
        match tokio::time::timeout(timeout, call(self.client.clone())).await {
            Ok(Ok(response)) => {
                self.stats.count_outcome(method, "OK");
                Ok(response.into_inner())
            }
            Ok(Err(status)) => {
                self.stats.count_outcome(method, code_name(status.code()));
                Err(RpcFailure::Status(status))
            }
            Err(_) => {
                self.stats.count_outcome(method, "Timeout");
                Err(RpcFailure::Timeout(timeout))
            }
        }
    }

    /// An RPC bounded by the request timeout, its failure as a runtime error.
    async fn call<T, F, Fut>(&self, method: &'static str, call: F) -> Result<T>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.rpc(method, self.request_timeout, call)
            .await
            .map_err(|failure| self.error(method, failure))
    }

    fn error(&self, call: &'static str, failure: RpcFailure) -> Error {
        match failure {
            RpcFailure::Timeout(after) => Error::Timeout { call, after },
            RpcFailure::Status(status) => {
                let message =
                    if status.code() == tonic::Code::Unavailable && !self.endpoint.exists() {
                        format!("runtime endpoint {}: no such socket", self.endpoint)
                    } else {
                        format!(
                            "runtime endpoint {}: {}",
                            self.endpoint,
                            describe_status(&status)
                        )
                    };
                Error::Failed { call, message }
            }
        }
    }

    /// Makes sure the version was checked before the first real call.
    async fn ready(&self) -> Result<()> {
        match self.verify().await {
            Ok(_) => Ok(()),
            Err(e) => Err(Error::Failed {
                call: "Version",
                message: e.to_string(),
            }),
        }
    }

    async fn list(&self) -> Result<Listing> {
        self.ready().await?;
        let sandboxes = self
            .call("ListPodSandbox", |mut c| async move {
                c.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                    .await
            })
            .await?
            .items;
        let containers = self
            .call("ListContainers", |mut c| async move {
                c.list_containers(cri::ListContainersRequest { filter: None })
                    .await
            })
            .await?
            .containers;
        Ok(self.listing(sandboxes, containers))
    }

    /// Groups the runtime's sandboxes and containers into pods.
    fn listing(&self, sandboxes: Vec<cri::PodSandbox>, containers: Vec<cri::Container>) -> Listing {
        struct Building {
            pod: Pod,
            newest_sandbox: i64,
        }
        let mut pods: HashMap<PodUid, Building> = HashMap::with_capacity(sandboxes.len());
        let mut pod_of_sandbox: HashMap<String, PodUid> = HashMap::with_capacity(sandboxes.len());
        for sandbox in sandboxes {
            if sandbox.id.is_empty() {
                self.stats.skip_record("pod sandbox", "empty ID");
                continue;
            }
            let Some(metadata) = sandbox.metadata else {
                self.stats
                    .skip_record("pod sandbox", &format!("{} has no metadata", sandbox.id));
                continue;
            };
            if metadata.uid.is_empty() {
                self.stats
                    .skip_record("pod sandbox", &format!("{} has no pod UID", sandbox.id));
                continue;
            }
            let uid = PodUid::new(&metadata.uid);
            let mut entry = Container::new(
                sandbox.id.as_str(),
                metadata.name.clone(),
                self.stats.decode_sandbox_state(sandbox.state),
            )
            .with_attempt(metadata.attempt);
            entry.created_at = time(sandbox.created_at);
            let meta = || pod_meta(&metadata, &sandbox.labels);
            match pods.get_mut(&uid) {
                Some(building) => {
                    if sandbox.created_at > building.newest_sandbox {
                        building.newest_sandbox = sandbox.created_at;
                        building.pod.meta = Arc::new(meta());
                    }
                    building.pod.sandboxes.push(entry);
                }
                None => {
                    pods.insert(
                        uid.clone(),
                        Building {
                            pod: Pod::new(meta()).with_sandbox(entry),
                            newest_sandbox: sandbox.created_at,
                        },
                    );
                }
            }
            pod_of_sandbox.insert(sandbox.id, uid);
        }
        for c in containers {
            if c.id.is_empty() {
                self.stats.skip_record("container", "empty ID");
                continue;
            }
            let uid = match pod_of_sandbox.get(&c.pod_sandbox_id) {
                Some(uid) => uid.clone(),
                None => match c.labels.get(POD_UID_LABEL).filter(|u| !u.is_empty()) {
                    Some(uid) => {
                        let uid = PodUid::new(uid);
                        pods.entry(uid.clone()).or_insert_with(|| {
                            let label = |key: &str| c.labels.get(key).cloned().unwrap_or_default();
                            Building {
                                pod: Pod::new(PodMeta::new(
                                    uid.as_str(),
                                    label(POD_NAME_LABEL),
                                    label(POD_NAMESPACE_LABEL),
                                )),
                                newest_sandbox: i64::MIN,
                            }
                        });
                        uid
                    }
                    None => {
                        // Usually a sandbox created between the two list
                        // calls; the next relist sees both.
                        tracing::debug!(
                            container = %c.id, sandbox = %c.pod_sandbox_id,
                            "container's sandbox is not listed; it waits for the next relist"
                        );
                        continue;
                    }
                },
            };
            let entry = self.container_entry(&c);
            if let Some(building) = pods.get_mut(&uid) {
                building.pod.containers.push(entry);
            }
        }
        Listing::new(pods.into_values().map(|b| b.pod))
    }

    fn container_entry(&self, c: &cri::Container) -> Container {
        let (name, attempt) = match &c.metadata {
            Some(m) => (m.name.clone(), m.attempt),
            None => (
                c.labels
                    .get(CONTAINER_NAME_LABEL)
                    .cloned()
                    .unwrap_or_default(),
                0,
            ),
        };
        let mut entry = Container::new(
            c.id.as_str(),
            name,
            self.stats.decode_container_state(c.state),
        )
        .with_attempt(attempt);
        entry.created_at = time(c.created_at);
        entry.image = image_name(c.image.as_ref(), &c.image_ref);
        entry
    }

    async fn status(&self, pod: &Pod) -> Result<PodStatus> {
        self.ready().await?;
        let mut status = PodStatus::new(pod.meta.clone());
        let mut sandbox_ids: Vec<&Container> = pod.sandboxes.iter().collect();
        sandbox_ids.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        for (newest, sandbox) in sandbox_ids
            .into_iter()
            .enumerate()
            .map(|(i, s)| (i == 0, s))
        {
            let request = cri::PodSandboxStatusRequest {
                pod_sandbox_id: sandbox.id.as_str().to_string(),
                verbose: false,
            };
            let answer = self
                .rpc(
                    "PodSandboxStatus",
                    self.request_timeout,
                    |mut c| async move { c.pod_sandbox_status(request).await },
                )
                .await;
            let Some(s) = (match answer {
                Ok(answer) => answer.status,
                // Removed since the listing: the next relist reports it gone.
                Err(RpcFailure::Status(e)) if e.code() == tonic::Code::NotFound => continue,
                Err(failure) => return Err(self.error("PodSandboxStatus", failure)),
            }) else {
                continue;
            };
            let state = self.stats.decode_sandbox_state(s.state);
            if newest
                && state == ContainerState::Running
                && let Some(network) = &s.network
            {
                status.ips = sandbox_ips(network);
            }
            let (name, attempt) = s
                .metadata
                .as_ref()
                .map(|m| (m.name.clone(), m.attempt))
                .unwrap_or_else(|| (sandbox.name.clone(), sandbox.attempt));
            let id = if s.id.is_empty() {
                sandbox.id.as_str()
            } else {
                s.id.as_str()
            };
            let mut entry = Container::new(id, name, state).with_attempt(attempt);
            entry.created_at = time(s.created_at).or(sandbox.created_at);
            status.sandboxes.push(entry);
        }
        for container in &pod.containers {
            let request = cri::ContainerStatusRequest {
                container_id: container.id.as_str().to_string(),
                verbose: false,
            };
            let answer = self
                .rpc(
                    "ContainerStatus",
                    self.request_timeout,
                    |mut c| async move { c.container_status(request).await },
                )
                .await;
            match answer {
                Ok(answer) => {
                    if let Some(s) = answer.status {
                        status
                            .containers
                            .push(self.container_status_entry(&s, container));
                    }
                }
                Err(RpcFailure::Status(e)) if e.code() == tonic::Code::NotFound => continue,
                Err(failure) => return Err(self.error("ContainerStatus", failure)),
            }
        }
        Ok(status)
    }

    fn container_status_entry(&self, s: &cri::ContainerStatus, listed: &Container) -> Container {
        container_from_status(&self.stats, s, listed)
    }

    // ---- Pod teardown: the calls crictl makes for `stopp` and `rmp`. ----

    /// Stops a pod sandbox and its containers (crictl `stopp`).
    pub async fn stop_pod(&self, sandbox_id: &str) -> Result<()> {
        let request = cri::StopPodSandboxRequest {
            pod_sandbox_id: sandbox_id.to_string(),
        };
        self.call("StopPodSandbox", |mut c| async move {
            c.stop_pod_sandbox(request).await
        })
        .await
        .map(drop)
    }

    /// Removes a pod sandbox and its containers (crictl `rmp`).
    pub async fn remove_pod(&self, sandbox_id: &str) -> Result<()> {
        let request = cri::RemovePodSandboxRequest {
            pod_sandbox_id: sandbox_id.to_string(),
        };
        self.call("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(request).await
        })
        .await
        .map(drop)
    }
}

impl Runtime for CriRuntime {
    fn list_pods(&self) -> BoxFuture<'_, Result<Listing>> {
        Box::pin(self.list())
    }

    fn pod_status<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Result<PodStatus>> {
        Box::pin(self.status(pod))
    }

    fn stats(&self) -> &RuntimeStats {
        &self.stats
    }

    fn container_events(&self) -> BoxFuture<'_, Result<EventStream>> {
        Box::pin(open_events(self))
    }
}

/// A CRI container status in our model, as the cache would hold it;
/// `listed` (the container as listed) fills what the status lacks. Unknown
/// state values become `Unknown` and are counted in `stats`.
pub fn container_from_status(
    stats: &RuntimeStats,
    s: &cri::ContainerStatus,
    listed: &Container,
) -> Container {
    let (name, attempt) = s
        .metadata
        .as_ref()
        .map(|m| (m.name.clone(), m.attempt))
        .unwrap_or_else(|| (listed.name.clone(), listed.attempt));
    let id = if s.id.is_empty() {
        listed.id.as_str()
    } else {
        s.id.as_str()
    };
    let state = stats.decode_container_state(s.state);
    let mut entry = Container::new(id, name, state).with_attempt(attempt);
    entry.created_at = time(s.created_at).or(listed.created_at);
    entry.started_at = time(s.started_at);
    entry.finished_at = time(s.finished_at);
    if state == ContainerState::Exited {
        entry.exit_code = Some(s.exit_code);
    }
    entry.reason = Some(s.reason.clone()).filter(|r| !r.is_empty());
    entry.image = image_name(s.image.as_ref(), &s.image_ref);
    if entry.image.is_empty() {
        entry.image = listed.image.clone();
    }
    entry
}

/// Opens the event stream. Separate from the `Runtime` impl for readability.
async fn open_events(runtime: &CriRuntime) -> Result<EventStream> {
    runtime.ready().await?;
    // No deadline: containerd (grpc-go) sends the response headers of this
    // stream with its first event, so on a quiet node the call returns only
    // when something happens. The evented generator treats a call that has
    // not failed after a moment as open.
    let answer = runtime
        .rpc("GetContainerEvents", Duration::MAX, |mut c| async move {
            c.get_container_events(cri::GetEventsRequest {}).await
        })
        .await;
    match answer {
        Ok(stream) => Ok(Box::pin(CriEvents {
            inner: stream,
            stats: runtime.stats.clone(),
            endpoint: runtime.endpoint.to_string(),
        })),
        Err(RpcFailure::Status(status)) if is_unimplemented(&status) => Err(Error::Unimplemented {
            call: "GetContainerEvents",
            message: format!(
                "runtime endpoint {}: {}",
                runtime.endpoint,
                describe_status(&status)
            ),
        }),
        Err(failure) => Err(runtime.error("GetContainerEvents", failure)),
    }
}

/// containerd 1.6 answers `Unimplemented`; some 1.6 patch releases answer
/// `Unknown` with "not implemented".
fn is_unimplemented(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::Unimplemented => true,
        tonic::Code::Unknown => {
            let message = status.message().to_ascii_lowercase();
            message.contains("not implemented") || message.contains("unimplemented")
        }
        _ => false,
    }
}

/// The CRI event stream, decoded into our model as it is read.
struct CriEvents {
    inner: tonic::Streaming<cri::ContainerEventResponse>,
    stats: Arc<RuntimeStats>,
    endpoint: String,
}

impl futures_core::Stream for CriEvents {
    type Item = Result<ContainerEvent>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        loop {
            let next = std::pin::Pin::new(&mut self.inner).poll_next(cx);
            return match next {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Ready(Some(Err(status))) => {
                    let message = format!(
                        "runtime endpoint {}: {}",
                        self.endpoint,
                        describe_status(&status)
                    );
                    Poll::Ready(Some(Err(if is_unimplemented(&status) {
                        Error::Unimplemented {
                            call: "GetContainerEvents",
                            message,
                        }
                    } else {
                        Error::Failed {
                            call: "GetContainerEvents",
                            message,
                        }
                    })))
                }
                Poll::Ready(Some(Ok(event))) => match event_from_cri(&self.stats, event) {
                    Some(event) => Poll::Ready(Some(Ok(event))),
                    None => continue,
                },
            };
        }
    }
}

/// Converts one CRI event; `None` (counted) for an event type we do not know
/// or an event without a container ID.
fn event_from_cri(
    stats: &RuntimeStats,
    event: cri::ContainerEventResponse,
) -> Option<ContainerEvent> {
    let Some(kind) = ContainerEventKind::from_cri(event.container_event_type) else {
        stats.skip_record(
            "container event",
            &format!("unknown event type {}", event.container_event_type),
        );
        return None;
    };
    if event.container_id.is_empty() {
        stats.skip_record("container event", "empty container ID");
        return None;
    }
    let sandbox = event.pod_sandbox_status.map(|s| {
        let state = stats.decode_sandbox_state(s.state);
        let pod = s
            .metadata
            .as_ref()
            .filter(|m| !m.uid.is_empty())
            .map(|m| pod_meta(m, &s.labels));
        let (name, attempt) = s
            .metadata
            .as_ref()
            .map(|m| (m.name.clone(), m.attempt))
            .unwrap_or_default();
        let mut entry = Container::new(s.id.as_str(), name, state).with_attempt(attempt);
        entry.created_at = time(s.created_at);
        let ips = s.network.as_ref().map(sandbox_ips).unwrap_or_default();
        SandboxSnapshot {
            pod,
            sandbox: entry,
            ips,
        }
    });
    let unnamed = Container::new("", "", ContainerState::Unknown);
    let containers = event
        .containers_statuses
        .iter()
        .filter(|s| !s.id.is_empty())
        .map(|s| container_from_status(stats, s, &unnamed))
        .collect();
    Some(ContainerEvent {
        id: ContainerId::new(&event.container_id),
        kind,
        created_at: time(event.created_at),
        sandbox: sandbox.filter(|s| !s.sandbox.id.is_empty()),
        containers,
    })
}

/// A pod's identity from its sandbox's metadata and labels.
fn pod_meta(metadata: &cri::PodSandboxMetadata, labels: &HashMap<String, String>) -> PodMeta {
    let mut meta = PodMeta::new(&metadata.uid, &metadata.name, &metadata.namespace);
    meta.labels = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    meta
}

/// A sandbox's IPs, primary first.
fn sandbox_ips(network: &cri::PodSandboxNetworkStatus) -> Vec<String> {
    std::iter::once(network.ip.clone())
        .chain(network.additional_ips.iter().map(|ip| ip.ip.clone()))
        .filter(|ip| !ip.is_empty())
        .collect()
}

/// A CRI timestamp (nanoseconds since the epoch; 0 means unset).
fn time(nanos: i64) -> Option<SystemTime> {
    u64::try_from(nanos)
        .ok()
        .filter(|&n| n > 0)
        .map(|n| UNIX_EPOCH + Duration::from_nanos(n))
}

fn image_name(spec: Option<&cri::ImageSpec>, image_ref: &str) -> String {
    spec.map(|s| s.image.as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or(image_ref)
        .to_string()
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

/// A status with its code and the chain of causes behind it, on one line:
/// `Unavailable: message: cause: …`, the way pleg's runtime errors quote it.
pub fn describe_status(status: &tonic::Status) -> String {
    let mut text = format!("{}: {}", code_name(status.code()), status.message());
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        let cause = e.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = e.source();
    }
    text
}

/// gRPC code names as they appear in metrics and logs.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
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

    #[test]
    fn timestamps_of_zero_or_below_are_unset() {
        assert_eq!(time(0), None);
        assert_eq!(time(-5), None);
        assert_eq!(time(1_500), Some(UNIX_EPOCH + Duration::from_nanos(1_500)));
    }
}
