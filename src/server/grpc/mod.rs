//! The gRPC subscription API (`proto/pleg/v1/pleg.proto`): its server over
//! a [`Daemon`] on a unix socket, and the client the CLI uses.
//!
//! This module owns the only conversions between our model and protobuf
//! ([`pb`]): protobuf types stay here, at the edge. It reads the generator
//! (subscriptions, the cache, last events, health) and never changes it.
//!
//! # Watch
//! A `Watch` call is one hub [`Subscription`](crate::hub::Subscription) with the request's filter and
//! capacity, streamed as it comes. The hub's bounded queue is the only
//! buffer: the stream never makes the generator wait and adds no unbounded
//! queue of its own. When the client goes away, tonic drops the stream and
//! with it the subscription (unsubscribed).
//!
//! # Shutdown
//! [`serve`] runs until its `shutdown` future completes. Then it stops
//! accepting connections, ends every open `Watch` stream after the
//! deliveries already queued for it (clients see a clean end, status OK),
//! waits up to [`DRAIN_GRACE`] for the connections to close, and removes its
//! socket file.
//!
//! # Socket
//! The socket is created with mode 0600 (0660 and a group with
//! [`bind_with`]), with no moment of a looser mode. [`serve`] refuses a
//! socket on which a live server answers, a symbolic link, anything that is
//! not a socket, and a socket pleg did not make; it replaces a stale socket
//! a previous pleg left (recorded in `<socket>.lock`). See
//! [`crate::unix`].
//!
//! # Layout
//! This file holds the generated code ([`pb`]) and the library-side views
//! (listings, health); `convert.rs` the conversions between them and
//! protobuf, `service.rs` the `pleg.v1.Pleg` service, `socket.rs` serving
//! it on a unix socket, `client.rs` the client.
//!
//! # Times on the wire
//! Times are `int64` nanoseconds since the Unix epoch, as in CRI (no
//! `google.protobuf.Timestamp`: that would need `prost-types`, which the
//! crate does not depend on). Times outside what an `i64` holds (before 1677,
//! after 2262) are saturated.
//!
//! # Example
//! ```
//! use pleg::runtime::fake::FakeRuntime;
//! use pleg::server::Daemon;
//! use pleg::server::grpc::{self, Client};
//! use pleg::{Config, Filter, Pleg};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let pleg = Pleg::new(FakeRuntime::new(), Config::generic()).expect("valid config");
//! let daemon = Daemon::new(pleg, "fake", "");
//! let socket = std::env::temp_dir().join(format!("pleg-doc-{}.sock", std::process::id()));
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn({
//!     let (daemon, socket) = (daemon.clone(), socket.clone());
//!     async move { grpc::serve(daemon, &socket, async { let _ = stopped.await; }).await }
//! });
//! # while !socket.exists() { tokio::task::yield_now().await; }
//!
//! // `pleg watch --daemon SOCKET` and `pleg pods --daemon SOCKET`:
//! let mut client = Client::connect(&socket).await.expect("a pleg daemon");
//! let mut events = client.watch(&Filter::default(), 0).await.expect("subscribed");
//! let pods = client.list_pods(None).await.expect("listed");
//! assert_eq!(pods, grpc::pod_listings(&daemon.pleg, None));
//!
//! stop.send(()).expect("server running");
//! assert!(events.next().await.is_none(), "a clean end at shutdown");
//! server.await.expect("server task").expect("served");
//! assert!(!socket.exists());
//! # }
//! ```

use std::time::Duration;

use crate::Pleg;
use crate::cache::{CacheEntry, LastEvent};
use crate::model::{PodStatus, PodUid};
use crate::server::{Daemon, Probe};
use crate::stream::{Mode, StreamState};

mod client;
mod convert;
mod service;
mod socket;
#[cfg(test)]
mod tests;

pub use client::{Client, ClientError, WatchStream};
pub use service::{PlegService, WatchResponseStream};
pub use socket::{BoundSocket, ServeError, bind, bind_with, serve, serve_bound, serve_bound_with};

/// The code generated from `proto/pleg/v1/pleg.proto` (package `pleg.v1`):
/// messages, the `Pleg` server trait ([`pb::pleg_server`]) and its client
/// ([`pb::pleg_client`]). The proto file documents every field.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
    tonic::include_proto!("pleg.v1");
}

/// The largest `Watch` capacity a client may ask for, in events.
pub const MAX_CAPACITY: usize = 1_000_000;

/// How long [`serve`] waits, once shut down, for connections to close after
/// their `Watch` streams ended, before it gives up on them.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

// --- the library-side views the CLI prints ---

/// One pod as the cache holds it, with what pleg last said about each of its
/// entries: the same whether read from an embedded generator
/// ([`pod_listings`]) or from a daemon ([`Client::list_pods`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodListing {
    /// The latest status fetched. When `error` is set, the last status
    /// fetched successfully (or an empty one if none ever was).
    pub status: PodStatus,
    /// The error of the last status fetch, if it failed.
    pub error: Option<String>,
    /// The last event of each container and sandbox pleg published about,
    /// including ones no longer in `status` (a removed container); in ID
    /// order.
    pub last_events: Vec<LastEvent>,
}

impl PodListing {
    /// The last event about this container or sandbox, if pleg published one.
    pub fn last_event(&self, id: &crate::ContainerId) -> Option<&LastEvent> {
        self.last_events.iter().find(|e| &e.id == id)
    }
}

/// Every cached pod of an embedded generator, optionally only those in
/// `namespace`, sorted by namespace, name and UID. What `ListPods` answers.
/// Each pod is one cache entry, read whole: its status and its last events
/// agree.
pub fn pod_listings(pleg: &Pleg, namespace: Option<&str>) -> Vec<PodListing> {
    fn order(l: &PodListing) -> (&str, &str, &PodUid) {
        let m = &l.status.meta;
        (&m.namespace, &m.name, &m.uid)
    }
    let mut listings: Vec<PodListing> = pleg
        .cache()
        .entries()
        .into_iter()
        .filter(|entry| namespace.is_none_or(|ns| entry.status.meta.namespace == ns))
        .map(PodListing::from)
        .collect();
    listings.sort_by(|a, b| order(a).cmp(&order(b)));
    listings
}

/// One cached pod of an embedded generator; `None` when it is not cached.
/// What `GetPodStatus` answers.
pub fn pod_listing(pleg: &Pleg, uid: &PodUid) -> Option<PodListing> {
    pleg.cache().get(uid).map(PodListing::from)
}

impl From<CacheEntry> for PodListing {
    fn from(entry: CacheEntry) -> Self {
        PodListing {
            // Already in ID order.
            last_events: entry.last_events.to_vec(),
            status: (*entry.status).clone(),
            error: entry.error.map(|e| e.to_string()),
        }
    }
}

pub(super) fn sorted_last_events(mut events: Vec<LastEvent>) -> Vec<LastEvent> {
    events.sort_by(|a, b| a.id.cmp(&b.id));
    events
}

/// The daemon's health, as `Health` answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// Whether every check passes.
    pub healthy: bool,
    /// The `/healthz` checks, in their stable order.
    pub checks: Vec<HealthCheck>,
    /// Which generator is in charge.
    pub mode: Mode,
    /// Where the runtime event stream stands.
    pub stream_state: StreamState,
}

/// One health check, as `Health` answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// `pleg`, `runtime` or `stream`.
    pub name: String,
    /// Whether it passes.
    pub ok: bool,
    /// Why it fails, or what it verified.
    pub message: String,
}

impl Health {
    /// The health of an embedded daemon: the checks of [`Probe::Health`].
    pub fn of(daemon: &Daemon) -> Health {
        let checks: Vec<HealthCheck> = daemon
            .checks(Probe::Health)
            .into_iter()
            .map(|check| HealthCheck {
                name: check.name.to_string(),
                ok: check.ok(),
                message: check.failure.unwrap_or(check.detail),
            })
            .collect();
        let status = daemon.pleg.stream_status();
        Health {
            healthy: checks.iter().all(|c| c.ok),
            checks,
            mode: status.mode,
            stream_state: status.state,
        }
    }
}
