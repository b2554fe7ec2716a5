//! The `pleg.v1.Pleg` service: `Watch` streams one hub subscription each;
//! `ListPods`, `GetPodStatus` and `Health` read the cache and the checks.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Request, Response, Status};

use super::convert::{delivery_to_pb, health_to_pb, listing_to_pb, subscribe_options};
use super::{Health, pb, pod_listing, pod_listings};
use crate::hub::Subscription;
use crate::model::PodUid;
use crate::server::Daemon;

// --- the server ---

/// The `pleg.v1.Pleg` service over a [`Daemon`]. [`serve`](super::serve) runs it on a
/// unix socket; an embedder with a tonic server of its own can add
/// [`PlegService::into_server`] to it.
#[derive(Clone)]
pub struct PlegService {
    daemon: Daemon,
    /// Cancelled to end every `Watch` stream (shutdown).
    ending: CancellationToken,
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
    /// The service over `daemon`.
    pub fn new(daemon: Daemon) -> Self {
        PlegService {
            daemon,
            ending: CancellationToken::new(),
        }
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
        let options = subscribe_options(request.get_ref())?;
        let subscription = self
            .daemon
            .pleg
            .subscribe_with(options)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::debug!(
            subscribers = self.daemon.pleg.hub().subscriber_count(),
            "gRPC Watch subscribed"
        );
        Ok(Response::new(WatchResponseStream {
            subscription,
            ending: Box::pin(self.ending.clone().cancelled_owned()),
            draining: None,
        }))
    }

    async fn list_pods(
        &self,
        request: Request<pb::ListPodsRequest>,
    ) -> Result<Response<pb::ListPodsResponse>, Status> {
        let namespace = &request.get_ref().namespace;
        let namespace = (!namespace.is_empty()).then_some(namespace.as_str());
        let pods = pod_listings(&self.daemon.pleg, namespace)
            .iter()
            .map(listing_to_pb)
            .collect();
        Ok(Response::new(pb::ListPodsResponse { pods }))
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
            Some(listing) => Ok(Response::new(listing_to_pb(&listing))),
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
}

/// The server side of one `Watch` call: the subscription's deliveries as
/// protobuf events. Dropping it (the client went away) unsubscribes.
pub struct WatchResponseStream {
    subscription: Subscription,
    ending: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Once the service is ending: how many more deliveries to hand out
    /// (those queued when the end was noticed, and a pending `Resync`).
    draining: Option<usize>,
}

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
        if this.draining.is_none() && this.ending.as_mut().poll(cx).is_ready() {
            // Bounded, so a generator that keeps publishing cannot keep an
            // ending stream open.
            this.draining = Some(this.subscription.queued() + 1);
        }
        let delivery = match &mut this.draining {
            None => match this.subscription.poll_recv(cx) {
                Poll::Ready(delivery) => delivery,
                Poll::Pending => return Poll::Pending,
            },
            Some(0) => None,
            Some(left) => {
                *left -= 1;
                this.subscription.try_recv()
            }
        };
        if delivery.is_none() {
            tracing::debug!("gRPC Watch stream ends");
        }
        Poll::Ready(delivery.map(|d| Ok(delivery_to_pb(&d))))
    }
}
