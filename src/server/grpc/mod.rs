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

pub use client::{Client, ClientError, MonitorStream, ResumingWatch, WatchFrom, WatchStream};
pub use convert::MonitorItem;
pub use service::{
    EPOCH_HEADER, KEPT_REPORT_FOR, MAX_KEPT_MONITORS, PlegService, SEQ_HEADER, ToolkitStream,
    WatchResponseStream,
};
pub use socket::{
    BoundSocket, MAX_STREAMS_PER_CONNECTION, ServeError, bind, bind_with, serve, serve_bound,
    serve_bound_with,
};

/// The code generated from `proto/pleg/v1/pleg.proto` (package `pleg.v1`):
/// messages, the `Pleg` server trait ([`pb::pleg_server`]) and its client
/// ([`pb::pleg_client`]). The proto file documents every field.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
    tonic::include_proto!("pleg.v1");
}

/// The largest `Watch` capacity a client may ask for, in events, whatever
/// the daemon's [`Limits::max_capacity`] (which can only lower it).
pub const MAX_CAPACITY: usize = 65_536;

/// The largest number of `pod_uids` in a `Watch` filter.
pub const MAX_FILTER_POD_UIDS: usize = 1_024;
/// The largest number of `labels` in a `Watch` filter.
pub const MAX_FILTER_LABELS: usize = 64;
/// The longest pod UID in a `Watch` filter, in bytes (a Kubernetes UID has 36).
pub const MAX_POD_UID_LEN: usize = 128;
/// The longest namespace in a request, in bytes (a DNS label: 63).
pub const MAX_NAMESPACE_LEN: usize = 63;
/// The longest label key in a `Watch` filter, in bytes (a Kubernetes key:
/// a 253-byte DNS prefix, `/`, a 63-byte name).
pub const MAX_LABEL_KEY_LEN: usize = 317;
/// The longest label value in a `Watch` filter, in bytes (Kubernetes: 63).
pub const MAX_LABEL_VALUE_LEN: usize = 63;

/// The page size of `ListPods` when the request asks for pages but names no
/// size, and what [`Client::list_pods`] asks for: about 0.5 MiB of pods with
/// a few containers each, well under the 4 MiB that gRPC clients accept by
/// default.
pub const DEFAULT_PAGE_SIZE: usize = 500;
/// The largest `ListPods` page; a larger `page_size` is lowered to it.
pub const MAX_PAGE_SIZE: usize = 2_000;
/// The largest message the server sends and the [`Client`] accepts: an
/// unpaged `ListPods` (`page_size` 0, what clients older than paging send)
/// of a node with tens of thousands of pods. A larger unpaged listing is
/// refused with `RESOURCE_EXHAUSTED`, telling the client to page.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Default of [`Limits::max_watches`].
pub const DEFAULT_MAX_WATCHES: usize = 32;
/// Default of [`Limits::max_capacity`].
pub const DEFAULT_MAX_CAPACITY: usize = 16_384;
/// Default of [`Limits::max_queued_events`].
pub const DEFAULT_MAX_QUEUED_EVENTS: usize = 32_768;
/// Default of [`Limits::keepalive_interval`].
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Default of [`Limits::keepalive_timeout`].
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one daemon hands out to its gRPC clients at most, so that its memory
/// stays bounded whatever they do (see the README's operator's guide for the
/// figures behind the defaults).
///
/// A `Watch` holds one of `max_watches` slots and `capacity` of
/// `max_queued_events` queue places from the moment it is accepted until
/// its stream is dropped: the client cancels, its connection closes or
/// resets, or the keepalive finds it dead. Past either bound the call fails
/// with `RESOURCE_EXHAUSTED`, naming the limit and its flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Open `Watch` streams at most (`--grpc-max-watches`).
    pub max_watches: usize,
    /// The largest `capacity` one `Watch` may ask for, at most
    /// [`MAX_CAPACITY`] (`--grpc-max-capacity`).
    pub max_capacity: usize,
    /// The sum of the capacities of the open `Watch` streams at most: the
    /// events all gRPC subscribers together may hold queued
    /// (`--grpc-max-queued-events`).
    pub max_queued_events: usize,
    /// How often the server pings an idle connection (HTTP/2 PING).
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed,
    /// ending its streams and freeing their slots.
    pub keepalive_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_watches: DEFAULT_MAX_WATCHES,
            max_capacity: DEFAULT_MAX_CAPACITY,
            max_queued_events: DEFAULT_MAX_QUEUED_EVENTS,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
        }
    }
}

/// Why a [`Limits`] is refused. Each variant names the setting.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitsError {
    /// A count that must be at least 1 is 0.
    #[error("{setting} must be at least 1, got 0")]
    Zero {
        /// The setting (its flag).
        setting: &'static str,
    },
    /// `max_capacity` is above [`MAX_CAPACITY`].
    #[error("--grpc-max-capacity {value} is above the most a Watch queue may hold, {MAX_CAPACITY}")]
    CapacityTooLarge {
        /// The value given.
        value: usize,
    },
    /// The default capacity does not fit in `max_capacity` or
    /// `max_queued_events`.
    #[error(
        "{setting} {value} is below the default Watch capacity {}, so a client asking for the default would always be refused",
        crate::hub::DEFAULT_CAPACITY
    )]
    BelowDefaultCapacity {
        /// The setting (its flag).
        setting: &'static str,
        /// The value given.
        value: usize,
    },
    /// A keepalive duration is zero.
    #[error("{setting} must be longer than 0s")]
    ZeroDuration {
        /// The setting (its flag).
        setting: &'static str,
    },
}

impl Limits {
    /// Sets [`Limits::max_watches`].
    #[must_use]
    pub fn with_max_watches(mut self, max_watches: usize) -> Self {
        self.max_watches = max_watches;
        self
    }

    /// Sets [`Limits::max_capacity`].
    #[must_use]
    pub fn with_max_capacity(mut self, max_capacity: usize) -> Self {
        self.max_capacity = max_capacity;
        self
    }

    /// Sets [`Limits::max_queued_events`].
    #[must_use]
    pub fn with_max_queued_events(mut self, max_queued_events: usize) -> Self {
        self.max_queued_events = max_queued_events;
        self
    }

    /// Sets the keepalive ping interval and timeout.
    #[must_use]
    pub fn with_keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keepalive_interval = interval;
        self.keepalive_timeout = timeout;
        self
    }

    /// Checks the limits.
    ///
    /// # Errors
    /// A [`LimitsError`] naming the setting that is out of range.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let default = crate::hub::DEFAULT_CAPACITY;
        if self.max_watches == 0 {
            return Err(LimitsError::Zero {
                setting: "--grpc-max-watches",
            });
        }
        if self.max_capacity > MAX_CAPACITY {
            return Err(LimitsError::CapacityTooLarge {
                value: self.max_capacity,
            });
        }
        for (setting, value) in [
            ("--grpc-max-capacity", self.max_capacity),
            ("--grpc-max-queued-events", self.max_queued_events),
        ] {
            if value < default {
                return Err(LimitsError::BelowDefaultCapacity { setting, value });
            }
        }
        for (setting, value) in [
            ("--grpc-keepalive-interval", self.keepalive_interval),
            ("--grpc-keepalive-timeout", self.keepalive_timeout),
        ] {
            if value.is_zero() {
                return Err(LimitsError::ZeroDuration { setting });
            }
        }
        Ok(())
    }
}

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
    /// Phase and health as a daemon answered them (crash loops included,
    /// from the deaths it followed); `None` from an embedded generator's
    /// cache, or from a daemon too old to say. See [`PodListing::health`].
    pub health: Option<crate::phase::PodHealth>,
}

impl PodListing {
    /// Phase and health: the daemon's, else derived from the status alone
    /// ([`crate::phase::PodHealth::of`]).
    pub fn health(&self) -> crate::phase::PodHealth {
        self.health
            .clone()
            .unwrap_or_else(|| crate::phase::PodHealth::of(&self.status))
    }

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

/// The sort key of a pod in `ListPods`: namespace, name, UID. A page token
/// is the key of the last pod of the page before; the next page starts
/// after it, so pods added or removed between pages are neither repeated
/// nor shift the others.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PageKey {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's UID.
    pub uid: String,
}

impl PageKey {
    /// The key of this listing's pod.
    pub fn of(listing: &PodListing) -> PageKey {
        let meta = &listing.status.meta;
        PageKey {
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            uid: meta.uid.to_string(),
        }
    }

    /// The opaque `page_token` for this key: `v1.` then the three fields,
    /// hex-encoded, separated by dots (any bytes survive, and nothing in
    /// it needs escaping).
    pub fn to_token(&self) -> String {
        fn hex(text: &str) -> String {
            use std::fmt::Write;
            text.bytes().fold(String::new(), |mut out, b| {
                let _ = write!(out, "{b:02x}");
                out
            })
        }
        format!(
            "v1.{}.{}.{}",
            hex(&self.namespace),
            hex(&self.name),
            hex(&self.uid)
        )
    }

    /// Reads a token written by [`PageKey::to_token`]; `None` for anything
    /// else.
    pub fn from_token(token: &str) -> Option<PageKey> {
        fn unhex(text: &str) -> Option<String> {
            if !text.len().is_multiple_of(2) {
                return None;
            }
            let bytes = (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            String::from_utf8(bytes).ok()
        }
        let mut parts = token.strip_prefix("v1.")?.split('.');
        let key = PageKey {
            namespace: unhex(parts.next()?)?,
            name: unhex(parts.next()?)?,
            uid: unhex(parts.next()?)?,
        };
        parts.next().is_none().then_some(key)
    }
}

/// One page of [`pod_listings`]: at most `limit` pods after `after` (from
/// the first if `None`), and the key to continue after when more remain.
pub fn pod_listings_page(
    pleg: &Pleg,
    namespace: Option<&str>,
    after: Option<&PageKey>,
    limit: usize,
) -> (Vec<PodListing>, Option<PageKey>) {
    fn key(entry: &CacheEntry) -> (&str, &str, &str) {
        let m = &entry.status.meta;
        (&m.namespace, &m.name, m.uid.as_str())
    }
    let mut entries: Vec<CacheEntry> = pleg
        .cache()
        .entries()
        .into_iter()
        .filter(|entry| namespace.is_none_or(|ns| entry.status.meta.namespace == ns))
        .filter(|entry| {
            after.is_none_or(|a| {
                key(entry) > (a.namespace.as_str(), a.name.as_str(), a.uid.as_str())
            })
        })
        .collect();
    entries.sort_by(|a, b| key(a).cmp(&key(b)));
    let more = entries.len() > limit;
    entries.truncate(limit);
    let page: Vec<PodListing> = entries.into_iter().map(PodListing::from).collect();
    let next = if more {
        page.last().map(PageKey::of)
    } else {
        None
    };
    (page, next)
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
            health: None,
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
