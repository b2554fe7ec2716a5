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
//!
//! ## Layout
//! This file holds the runtime and its calls; `endpoint.rs` parses the
//! endpoint and connects (the `Version` handshake, [`ConnectError`]),
//! `convert.rs` holds the pure conversions from CRI messages into our model,
//! `events.rs` the event stream.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::sync::OnceCell;
use tonic::transport::Channel;

use super::{
    BoxFuture, Call, CriMethod, Error, EventStream, PodControl, Result, RpcOutcome, Runtime,
    RuntimeStats,
};
use crate::model::{Container, ContainerId, ContainerState, Listing, Pod, PodStatus};

mod convert;
mod endpoint;
mod events;
mod listed;
mod wire;

pub use convert::container_from_status;
pub use endpoint::{ConnectError, CriConfig, RuntimeEndpoint, RuntimeVersion};

/// The socket containerd serves CRI on by default.
pub const DEFAULT_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";

/// The kubelet's default runtime request timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_mins(2);

/// The largest message accepted from the runtime (and sent to it):
/// 64 MiB, four times the kubelet's 16 MiB.
///
/// CRI v1 has no paging: `ListContainers` and `ListPodSandbox` answer with
/// every container and sandbox at once (their requests carry only a filter),
/// so the one answer must fit. The kubelet's 16 MiB suffices for the
/// kubelet's few hundred containers, not for the 50,000 pleg is built for:
/// a container the fake CRI server lists (64-hex IDs, the kubelet's four
/// labels, an image) weighs about 400 bytes on the wire, 20.2 MB at 50,000
/// (`pleg_testkit::scale`, `a_50000_container_listing_fits_the_cri_message_cap`),
/// and containerd adds the kubelet's five annotations, about 250 bytes more.
/// 64 MiB leaves room for twice that. The cap is a bound, not a buffer: a
/// listing costs its own size either way, and the cap only refuses a runtime
/// whose answer is larger still. [`CriConfig::with_max_message_size`] sets
/// another.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// The HTTP/2 keep-alive interval. containerd (grpc-go's default enforcement
/// policy) tolerates one ping per 5 minutes on a quiet connection and answers
/// more with `GOAWAY too_many_pings`, cutting the event stream; so pleg pings
/// a little less often than that. A runtime that dies closes the unix socket,
/// which is noticed at once; keep-alive is for a peer that hangs.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(330);

/// The CRI API version pleg speaks.
pub const CRI_API_VERSION: &str = "v1";

/// The listing a relist builds from the runtime's two answers as they came
/// over the wire (`ListPodSandboxResponse`, then `ListContainersResponse`,
/// each as protobuf bytes), keeping what it needs for the next, as
/// [`CriRuntime`] does: for benchmarks, which time this without a socket.
#[cfg(feature = "test-util")]
#[derive(Debug, Default)]
pub struct AnswersDecoder {
    stats: RuntimeStats,
    last: (convert::KnownMetas, convert::ListedBytes),
}

#[cfg(feature = "test-util")]
impl AnswersDecoder {
    /// A decoder that has seen no listing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The listing of the two answers.
    ///
    /// # Errors
    /// The call whose answer does not decode, and why.
    pub fn listing(
        &mut self,
        sandboxes: &[u8],
        containers: &[u8],
    ) -> std::result::Result<Listing, String> {
        let (known, kept) = &mut self.last;
        convert::listing_from_answers(&self.stats, known, kept, sandboxes, containers)
            .map_err(|(method, e)| format!("{}: {e}", method.as_str()))
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
    /// The listing calls, answered as bytes (see `listed`).
    listing: listed::ListingClient,
    /// What the last listing left for the next: its pods' identities, and
    /// its pods by the bytes they came in (see
    /// `convert::listing_from_answers`). Taken once per relist.
    last_listing: parking_lot::Mutex<(convert::KnownMetas, convert::ListedBytes)>,
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
    /// The endpoint, as `unix:///path`.
    pub fn endpoint(&self) -> &RuntimeEndpoint {
        &self.endpoint
    }

    /// What the runtime said about itself, once a call succeeded.
    pub fn version(&self) -> Option<&RuntimeVersion> {
        self.version.get()
    }

    /// Runs one RPC with a deadline, counting it by method and outcome.
    async fn rpc<T, F, Fut>(
        &self,
        method: CriMethod,
        timeout: Duration,
        call: F,
    ) -> std::result::Result<T, RpcFailure>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        rpc(&self.client, &self.stats, method, timeout, call).await
    }

    /// An RPC bounded by the request timeout, its failure as a runtime error.
    async fn call<T, F, Fut>(&self, method: CriMethod, call: F) -> Result<T>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.rpc(method, self.request_timeout, call)
            .await
            .map_err(|failure| self.error(method, failure))
    }

    fn error(&self, method: CriMethod, failure: RpcFailure) -> Error {
        rpc_error(&self.endpoint, method, failure)
    }

    /// Makes sure the version was checked before the first real call.
    async fn ready(&self) -> Result<()> {
        match self.verify().await {
            Ok(_) => Ok(()),
            Err(e) => Err(Error::Failed {
                call: Call::Cri(CriMethod::Version),
                code: e.code(),
                message: e.to_string(),
                source: Some(Arc::new(e)),
            }),
        }
    }

    async fn list(&self) -> Result<Listing> {
        self.ready().await?;
        let sandboxes = self
            .listing_call(CriMethod::ListPodSandbox, self.listing.clone().sandboxes())
            .await?;
        let containers = match self
            .listing_call(CriMethod::ListContainers, self.listing.clone().containers())
            .await
        {
            Ok(containers) => containers,
            Err(e) => {
                self.stats
                    .count_request(CriMethod::ListPodSandbox, RpcOutcome::Code(tonic::Code::Ok));
                return Err(e);
            }
        };
        let decoded = {
            let mut last = self.last_listing.lock();
            let (known, kept) = &mut *last;
            convert::listing_from_answers(&self.stats, known, kept, &sandboxes, &containers)
        };
        // Both calls are counted once their answers are read: the one whose
        // answer does not decode as `Internal`, as a decoding codec would
        // have failed it.
        let failed = decoded.as_ref().err().map(|(method, _)| *method);
        for method in [CriMethod::ListPodSandbox, CriMethod::ListContainers] {
            let code = if failed == Some(method) {
                tonic::Code::Internal
            } else {
                tonic::Code::Ok
            };
            self.stats.count_request(method, RpcOutcome::Code(code));
        }
        decoded.map_err(|(method, e)| {
            let status = tonic::Status::internal(e.to_string());
            self.error(method, RpcFailure::Status(status))
        })
    }

    /// One of the two listing calls, its answer still bytes and, when it
    /// came, not yet counted (see `rpc_uncounted`); a failure is counted.
    async fn listing_call<T, Fut>(&self, method: CriMethod, call: Fut) -> Result<T>
    where
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let (outcome, answer) = rpc_uncounted(
            &self.client,
            &self.stats,
            method,
            self.request_timeout,
            |_| call,
        )
        .await;
        if answer.is_err() {
            self.stats.count_request(method, outcome);
        }
        answer.map_err(|failure| self.error(method, failure))
    }

    async fn status(&self, pod: &Pod) -> Result<PodStatus> {
        self.ready().await?;
        let mut status = PodStatus::new(pod.meta.clone());
        // Exact sizes: the cache keeps these vectors for as long as the
        // pod lives (a pod of one sandbox would otherwise hold room for four).
        status.sandboxes.reserve_exact(pod.sandboxes.len());
        status.containers.reserve_exact(pod.containers.len());
        let mut sandbox_ids: Vec<&Container> = pod.sandboxes.iter().collect();
        sandbox_ids.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        // Every status of the pod is asked for at once: a pod's statuses
        // take one round trip, not one per sandbox and container.
        let sandbox_answers = futures_util::future::join_all(sandbox_ids.iter().map(|sandbox| {
            let request = cri::PodSandboxStatusRequest {
                pod_sandbox_id: sandbox.id.as_str().to_string(),
                verbose: false,
            };
            self.rpc(
                CriMethod::PodSandboxStatus,
                self.request_timeout,
                |mut c| async move { c.pod_sandbox_status(request).await },
            )
        }));
        let container_answers =
            futures_util::future::join_all(pod.containers.iter().map(|container| {
                let request = cri::ContainerStatusRequest {
                    container_id: container.id.as_str().to_string(),
                    verbose: false,
                };
                self.rpc(
                    CriMethod::ContainerStatus,
                    self.request_timeout,
                    |mut c| async move { c.container_status(request).await },
                )
            }));
        let (sandbox_answers, container_answers) = tokio::join!(sandbox_answers, container_answers);
        for (i, (sandbox, answer)) in sandbox_ids.into_iter().zip(sandbox_answers).enumerate() {
            let newest = i == 0;
            let Some(s) = (match answer {
                Ok(answer) => answer.status,
                // Removed since the listing: the next relist reports it gone.
                Err(RpcFailure::Status(e)) if e.code() == tonic::Code::NotFound => continue,
                Err(failure) => return Err(self.error(CriMethod::PodSandboxStatus, failure)),
            }) else {
                continue;
            };
            let entry = convert::sandbox_from_status(&self.stats, &s, sandbox);
            if newest
                && entry.state == ContainerState::Running
                && let Some(network) = &s.network
            {
                status.ips = convert::sandbox_ips(network);
            }
            status.sandboxes.push(entry);
        }
        for (container, answer) in pod.containers.iter().zip(container_answers) {
            match answer {
                Ok(answer) => {
                    if let Some(s) = answer.status {
                        status
                            .containers
                            .push(container_from_status(&self.stats, &s, container));
                    }
                }
                Err(RpcFailure::Status(e)) if e.code() == tonic::Code::NotFound => {}
                Err(failure) => return Err(self.error(CriMethod::ContainerStatus, failure)),
            }
        }
        status.sandboxes.shrink_to_fit();
        status.containers.shrink_to_fit();
        Ok(status)
    }

    // ---- Pod teardown: the calls crictl makes for `stopp` and `rmp`. ----

    /// Stops a pod sandbox and its containers (crictl `stopp`).
    ///
    /// # Errors
    /// The runtime's error (its gRPC code is kept: `NotFound` for a sandbox that is gone), or a timeout.
    pub async fn stop_pod(&self, sandbox_id: &str) -> Result<()> {
        self.ready().await?;
        let request = cri::StopPodSandboxRequest {
            pod_sandbox_id: sandbox_id.to_string(),
        };
        self.call(CriMethod::StopPodSandbox, |mut c| async move {
            c.stop_pod_sandbox(request).await
        })
        .await
        .map(drop)
    }

    /// Removes a pod sandbox and its containers (crictl `rmp`).
    ///
    /// # Errors
    /// The runtime's error (its gRPC code is kept), or a timeout.
    pub async fn remove_pod(&self, sandbox_id: &str) -> Result<()> {
        self.ready().await?;
        let request = cri::RemovePodSandboxRequest {
            pod_sandbox_id: sandbox_id.to_string(),
        };
        self.call(CriMethod::RemovePodSandbox, |mut c| async move {
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

    fn probe(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async {
            let request = cri::VersionRequest {
                version: CRI_API_VERSION.to_string(),
            };
            self.call(CriMethod::Version, |mut c| async move {
                c.version(request).await
            })
            .await
            .map(drop)
        })
    }

    fn container_events(&self) -> BoxFuture<'_, Result<EventStream>> {
        Box::pin(events::open(self))
    }
}

/// Runs one RPC with a deadline, counting it by method and outcome.
async fn rpc<T, F, Fut>(
    client: &RuntimeServiceClient<Channel>,
    stats: &RuntimeStats,
    method: CriMethod,
    timeout: Duration,
    call: F,
) -> std::result::Result<T, RpcFailure>
where
    F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
    Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
{
    let (outcome, answer) = rpc_uncounted(client, stats, method, timeout, call).await;
    stats.count_request(method, outcome);
    answer
}

/// Runs one RPC with a deadline and times it, leaving its outcome to the
/// caller to count: an answer read as bytes is only known to be good once
/// decoded, and one that does not decode counts as `Internal`, as it would
/// have through a decoding codec.
async fn rpc_uncounted<T, F, Fut>(
    client: &RuntimeServiceClient<Channel>,
    stats: &RuntimeStats,
    method: CriMethod,
    timeout: Duration,
    call: F,
) -> (RpcOutcome, std::result::Result<T, RpcFailure>)
where
    F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
    Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
{
    let started = tokio::time::Instant::now();
    let ended = match tokio::time::timeout(timeout, call(client.clone())).await {
        Ok(Ok(response)) => (RpcOutcome::Code(tonic::Code::Ok), Ok(response.into_inner())),
        Ok(Err(status)) => (
            RpcOutcome::Code(status.code()),
            Err(RpcFailure::Status(status)),
        ),
        Err(_) => (RpcOutcome::Timeout, Err(RpcFailure::Timeout(timeout))),
    };
    stats.time_request(method, started.elapsed());
    ended
}

/// A failed RPC as a runtime error, naming the endpoint.
fn rpc_error(endpoint: &RuntimeEndpoint, method: CriMethod, failure: RpcFailure) -> Error {
    let call = Call::Cri(method);
    match failure {
        RpcFailure::Timeout(after) => Error::Timeout { call, after },
        RpcFailure::Status(status) => {
            let message = if status.code() == tonic::Code::Unavailable && !endpoint.exists() {
                format!("runtime endpoint {endpoint}: no such socket")
            } else {
                format!("runtime endpoint {endpoint}: {}", describe_status(&status))
            };
            Error::Failed {
                call,
                code: status.code(),
                message,
                source: Some(Arc::new(status)),
            }
        }
    }
}

impl PodControl for CriRuntime {
    fn stop_pod<'a>(&'a self, sandbox_id: &'a ContainerId) -> BoxFuture<'a, Result<()>> {
        Box::pin(CriRuntime::stop_pod(self, sandbox_id.as_str()))
    }

    fn remove_pod<'a>(&'a self, sandbox_id: &'a ContainerId) -> BoxFuture<'a, Result<()>> {
        Box::pin(CriRuntime::remove_pod(self, sandbox_id.as_str()))
    }
}

/// A status with its code and the chain of causes behind it, on one line:
/// `Unavailable: message: cause: …`, the way pleg's runtime errors quote it.
pub fn describe_status(status: &tonic::Status) -> String {
    crate::error::chain_after(
        format!("{}: {}", code_name(status.code()), status.message()),
        std::error::Error::source(status),
    )
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
