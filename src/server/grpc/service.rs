//! The `pleg.v1.Pleg` service: `Watch` streams one hub subscription each;
//! `ListPods`, `GetPodStatus` and `Health` read the cache and the checks.
//!
//! # Limits
//! Each `Watch` holds a permit of the `watches` semaphore and `capacity`
//! permits of the `queued` one ([`Limits`]) inside its response stream:
//! tonic drops the stream when the client cancels, its connection closes or
//! resets, or the keepalive gives up on it, and the permits go back with
//! it. A client that never reads holds its bounded hub queue and no more:
//! hyper polls the stream only when HTTP/2 flow control lets it send.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Request, Response, Status};

use super::convert::{delivery_to_pb, health_to_pb, subscribe_options};
use super::{
    Health, Limits, MAX_MESSAGE_SIZE, MAX_PAGE_SIZE, PageKey, pb, pod_listing, pod_listings_page,
};
use crate::hub::Subscription;
use crate::model::PodUid;
use crate::server::Daemon;

mod toolkit;

pub use toolkit::{KEPT_REPORT_FOR, MAX_KEPT_MONITORS, ToolkitStream};

// --- the server ---

/// The `pleg.v1.Pleg` service over a [`Daemon`]. [`serve`](super::serve) runs it on a
/// unix socket; an embedder with a tonic server of its own can add
/// [`PlegService::into_server`] to it.
#[derive(Clone)]
pub struct PlegService {
    daemon: Daemon,
    /// Cancelled to end every `Watch` stream (shutdown).
    ending: CancellationToken,
    limits: Limits,
    /// One permit per open `Watch`.
    watches: Arc<Semaphore>,
    /// One permit per queue place of the open `Watch` streams.
    queued: Arc<Semaphore>,
    /// `WatchSession`'s watchers.
    sessions: toolkit::Sessions,
    /// `Monitor`s kept past their call.
    kept_monitors: toolkit::KeptMonitors,
}

impl std::fmt::Debug for PlegService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlegService")
            .field("runtime_endpoint", &self.daemon.runtime_endpoint)
            .field("ending", &self.ending.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl PlegService {
    /// The service over `daemon`, with the default [`Limits`].
    pub fn new(daemon: Daemon) -> Self {
        PlegService::with_limits(daemon, Limits::default())
    }

    /// The service over `daemon`, with these limits (checked by
    /// [`Limits::validate`] beforehand; a 0 here refuses every `Watch`).
    pub fn with_limits(daemon: Daemon, limits: Limits) -> Self {
        PlegService {
            daemon,
            ending: CancellationToken::new(),
            limits,
            watches: Arc::new(Semaphore::new(
                limits.max_watches.min(Semaphore::MAX_PERMITS),
            )),
            queued: Arc::new(Semaphore::new(
                limits.max_queued_events.min(Semaphore::MAX_PERMITS),
            )),
            sessions: toolkit::Sessions::default(),
            kept_monitors: toolkit::KeptMonitors::default(),
        }
    }

    /// The limits it enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// `Watch` streams open now.
    pub fn open_watches(&self) -> usize {
        self.limits.max_watches.min(Semaphore::MAX_PERMITS) - self.watches.available_permits()
    }

    /// Ends every open `Watch` stream after the deliveries already queued for
    /// it, and refuses new ones (`UNAVAILABLE`). The other calls keep
    /// working.
    pub fn end_watches(&self) {
        self.ending.cancel();
    }

    /// The token that, cancelled, ends every `Watch` stream.
    pub(super) fn ending(&self) -> CancellationToken {
        self.ending.clone()
    }

    /// A stream's slot and queue places, or why there are none: the
    /// limits of the module's docs, shared by every streaming call.
    fn admit(&self, call: &str, capacity: usize) -> Result<Permits, Status> {
        if self.ending.is_cancelled() {
            return Err(Status::unavailable("the pleg daemon is shutting down"));
        }
        let Ok(watch_permit) = self.watches.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "the pleg daemon serves at most {} streams at once (--grpc-max-watches; \
                 {call} is one); all are in use, try again later",
                self.limits.max_watches
            )));
        };
        let places = u32::try_from(capacity).unwrap_or(u32::MAX);
        let Ok(queue_permit) = self.queued.clone().try_acquire_many_owned(places) else {
            return Err(Status::resource_exhausted(format!(
                "a {call} with capacity {capacity} does not fit: the open streams hold {} of the \
                 {} queued events the pleg daemon allows (--grpc-max-queued-events); \
                 ask for a smaller capacity or try again later",
                self.limits.max_queued_events.min(Semaphore::MAX_PERMITS)
                    - self.queued.available_permits(),
                self.limits.max_queued_events
            )));
        };
        Ok((watch_permit, queue_permit))
    }

    /// The tonic service to add to a server.
    pub fn into_server(self) -> pb::pleg_server::PlegServer<PlegService> {
        pb::pleg_server::PlegServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::pleg_server::Pleg for PlegService {
    type WatchStream = WatchResponseStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<WatchResponseStream>, Status> {
        if self.ending.is_cancelled() {
            return Err(Status::unavailable("the pleg daemon is shutting down"));
        }
        let options = subscribe_options(request.get_ref(), self.limits.max_capacity)?;
        let initial_state = options.initial_state;
        let permits = self.admit("Watch", options.capacity)?;
        // With an initial state, this waits for the first relist: unless the
        // daemon ends first.
        let subscription = tokio::select! {
            subscribed = self.daemon.pleg.watch(options) => subscribed.map_err(watch_refused)?,
            () = self.ending.cancelled() => {
                return Err(Status::unavailable("the pleg daemon is shutting down"));
            }
        };
        let token = subscription.resume_token();
        tracing::debug!(
            subscribers = self.daemon.pleg.hub().subscriber_count(),
            %token,
            initial_state,
            "gRPC Watch subscribed"
        );
        let mut response = Response::new(WatchResponseStream {
            subscription,
            initial_state,
            ending: Box::pin(self.ending.clone().cancelled_owned()),
            draining: None,
            _permits: permits,
            in_a_row: 0,
        });
        // Epochs are ASCII letters, digits, '-' and '_': always a valid
        // header value.
        for (name, value) in [
            (EPOCH_HEADER, token.epoch.to_string()),
            (SEQ_HEADER, token.seq.to_string()),
        ] {
            if let Ok(value) = value.parse() {
                response.metadata_mut().insert(name, value);
            }
        }
        Ok(response)
    }

    async fn list_pods(
        &self,
        request: Request<pb::ListPodsRequest>,
    ) -> Result<Response<pb::ListPodsResponse>, Status> {
        let request = request.get_ref();
        if request.namespace.len() > super::MAX_NAMESPACE_LEN {
            return Err(Status::invalid_argument(format!(
                "namespace is {} bytes long; at most {} are allowed",
                request.namespace.len(),
                super::MAX_NAMESPACE_LEN
            )));
        }
        let namespace = (!request.namespace.is_empty()).then_some(request.namespace.as_str());
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(PageKey::from_token(&request.page_token).ok_or_else(|| {
                let shown: String = request.page_token.chars().take(64).collect();
                Status::invalid_argument(format!(
                    "page_token {shown:?} is not a token this daemon issued \
                     (send the next_page_token of the previous answer, or none for the first page)"
                ))
            })?)
        };
        // 0: every pod in one answer, as before paging existed.
        let limit = match usize::try_from(request.page_size) {
            Ok(0) => usize::MAX,
            Ok(size) => size.min(MAX_PAGE_SIZE),
            Err(_) => MAX_PAGE_SIZE,
        };
        let (page, next) = pod_listings_page(&self.daemon.pleg, namespace, after.as_ref(), limit);
        let answer = pb::ListPodsResponse {
            pods: page.iter().map(|l| self.status_to_pb(l)).collect(),
            next_page_token: next.map(|key| key.to_token()).unwrap_or_default(),
        };
        let size = prost::Message::encoded_len(&answer);
        if size > MAX_MESSAGE_SIZE {
            return Err(Status::resource_exhausted(format!(
                "{} pods take {size} bytes, more than the {MAX_MESSAGE_SIZE} bytes of one answer; \
                 ask for pages (page_size, page_token)",
                answer.pods.len()
            )));
        }
        Ok(Response::new(answer))
    }

    async fn get_pod_status(
        &self,
        request: Request<pb::GetPodStatusRequest>,
    ) -> Result<Response<pb::PodStatus>, Status> {
        let uid = &request.get_ref().uid;
        if uid.is_empty() {
            return Err(Status::invalid_argument("uid is empty; name the pod's UID"));
        }
        match pod_listing(&self.daemon.pleg, &PodUid::new(uid)) {
            Some(listing) => Ok(Response::new(self.status_to_pb(&listing))),
            None => Err(Status::not_found(format!(
                "pod {uid} is not in pleg's cache (never seen, or gone from the runtime)"
            ))),
        }
    }

    async fn health(
        &self,
        _request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        Ok(Response::new(health_to_pb(&Health::of(&self.daemon))))
    }

    async fn wait_for(
        &self,
        request: Request<pb::WaitForRequest>,
    ) -> Result<Response<pb::WaitForResponse>, Status> {
        self.toolkit_wait_for(request.get_ref())
            .await
            .map(Response::new)
    }

    type MonitorStream = ToolkitStream<pb::MonitorUpdate>;

    async fn monitor(
        &self,
        request: Request<pb::MonitorRequest>,
    ) -> Result<Response<Self::MonitorStream>, Status> {
        self.toolkit_monitor(request.get_ref()).map(Response::new)
    }

    type TerminalReportsStream = ToolkitStream<pb::TerminalReportEvent>;

    async fn terminal_reports(
        &self,
        request: Request<pb::TerminalReportsRequest>,
    ) -> Result<Response<Self::TerminalReportsStream>, Status> {
        self.toolkit_terminal_reports(request.get_ref())
            .map(Response::new)
    }

    type WatchSessionStream = ToolkitStream<pb::SessionUpdate>;

    async fn watch_session(
        &self,
        request: Request<pb::WatchSessionRequest>,
    ) -> Result<Response<Self::WatchSessionStream>, Status> {
        self.toolkit_watch_session(request.get_ref())
            .map(Response::new)
    }
}

/// The response header that names the daemon's run (its epoch).
pub const EPOCH_HEADER: &str = "pleg-epoch";

/// The response header that says where a `Watch` starts: the stream holds
/// every matching item after this seq.
pub const SEQ_HEADER: &str = "pleg-seq";

/// Why a `Watch` cannot be had, as a status that names the field at fault.
fn watch_refused(error: crate::hub::Error) -> Status {
    match error {
        crate::hub::Error::ResumeAhead { .. } => {
            Status::invalid_argument(format!("since: {error}"))
        }
        other => Status::invalid_argument(other.to_string()),
    }
}

/// A stream's `--grpc-max-watches` slot and `--grpc-max-queued-events`
/// places, given back when dropped.
type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// The server side of one `Watch` call: the subscription's deliveries as
/// protobuf events. Dropping it (the client went away) unsubscribes.
pub struct WatchResponseStream {
    subscription: Subscription,
    /// Whether the watch asked for an initial state (and so knows `Synced`).
    initial_state: bool,
    ending: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Once the service is ending: how many more deliveries to hand out
    /// (those queued when the end was noticed, and a pending `Resync`).
    draining: Option<usize>,
    /// Its `Watch` slot and queue places, given back when it is dropped.
    _permits: Permits,
    /// Deliveries handed out since the encoder last saw `Pending`.
    in_a_row: usize,
}

/// How many deliveries the stream hands out before it lets the encoder
/// flush: tonic encodes what a stream has ready into one chunk of up to
/// 32 KiB, and hyper holds two chunks of a stream whose client does not
/// read, so a small chunk keeps a stalled stream's memory outside its hub
/// queue to a few KiB (about 16 events' worth).
const DELIVERIES_PER_CHUNK: usize = 16;

impl std::fmt::Debug for WatchResponseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchResponseStream")
            .field("queued", &self.subscription.queued())
            .field("draining", &self.draining)
            .finish_non_exhaustive()
    }
}

impl Stream for WatchResponseStream {
    type Item = Result<pb::Event, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let delivery = match this.poll_delivery(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(delivery) => delivery,
            };
            let Some(delivery) = delivery else {
                tracing::debug!("gRPC Watch stream ends");
                return Poll::Ready(None);
            };
            if let Some(event) = delivery_to_pb(&delivery, this.initial_state) {
                return Poll::Ready(Some(Ok(event)));
            }
        }
    }
}

impl WatchResponseStream {
    fn poll_delivery(&mut self, cx: &mut Context<'_>) -> Poll<Option<crate::hub::Delivery>> {
        let this = self;
        if this.draining.is_none() && this.ending.as_mut().poll(cx).is_ready() {
            // Bounded, so a generator that keeps publishing cannot keep an
            // ending stream open.
            this.draining = Some(this.subscription.queued() + 1);
        }
        let delivery = match &mut this.draining {
            None if this.in_a_row >= DELIVERIES_PER_CHUNK => {
                // Pending with a chunk in hand makes tonic flush it; the
                // wake brings the encoder straight back for more.
                this.in_a_row = 0;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            None => match this.subscription.poll_recv(cx) {
                Poll::Ready(delivery) => {
                    this.in_a_row += 1;
                    delivery
                }
                Poll::Pending => {
                    this.in_a_row = 0;
                    return Poll::Pending;
                }
            },
            Some(0) => None,
            Some(left) => {
                *left -= 1;
                this.subscription.try_recv()
            }
        };
        Poll::Ready(delivery)
    }
}
