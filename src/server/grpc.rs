//! The gRPC subscription API (`proto/pleg/v1/pleg.proto`): its server over
//! a [`Daemon`] on a unix socket, and the client the CLI uses.
//!
//! This module owns the only conversions between our model and protobuf
//! ([`pb`]): protobuf types stay here, at the edge. It reads the generator
//! (subscriptions, the cache, last events, health) and never changes it.
//!
//! # Watch
//! A `Watch` call is one hub [`Subscription`] with the request's filter and
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
//! The socket is created with mode 0600. [`serve`] refuses a socket on which
//! a live server answers, replaces a stale socket file (nobody listening),
//! and never removes anything that is not a socket.
//!
//! # Times on the wire
//! Times are `int64` nanoseconds since the Unix epoch, as in CRI (no
//! `google.protobuf.Timestamp`: that would need `prost-types`, which the
//! crate does not depend on). Times outside what an `i64` holds (before 1677,
//! after 2262) are saturated.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use pleg::evented::{EventedConfig, EventedPleg};
//! use pleg::runtime::fake::FakeRuntime;
//! use pleg::server::Daemon;
//! use pleg::server::grpc::{self, Client};
//! use pleg::Filter;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let config = EventedConfig { stream: false, ..EventedConfig::default() };
//! let pleg = EventedPleg::new(FakeRuntime::new(), config).expect("valid config");
//! let daemon = Daemon {
//!     pleg: Arc::new(pleg),
//!     runtime_endpoint: "fake".into(),
//!     metrics_prefix: String::new(),
//! };
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

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_core::Stream;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::event::{ContainerRef, EventSource, EventType, PodLifecycleEvent};
use crate::evented::{Mode, StreamState};
use crate::generic::{GenericPleg, LastEvent};
use crate::hub::{DEFAULT_CAPACITY, Delivery, Filter, SubscribeOptions, Subscription};
use crate::model::{Container, ContainerState, EntryKind, PodMeta, PodStatus, PodUid};
use crate::server::{Daemon, Probe};

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

/// How long probing an existing socket for a live server may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the client waits to connect, and for each unary call.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Every cached pod of an embedded generator (an [`EventedPleg`](crate::evented::EventedPleg)
/// dereferences to one), optionally only those in `namespace`, sorted by
/// namespace, name and UID. What `ListPods` answers.
pub fn pod_listings(pleg: &GenericPleg, namespace: Option<&str>) -> Vec<PodListing> {
    let mut listings: Vec<PodListing> = pleg
        .cache()
        .entries()
        .into_iter()
        .filter(|entry| namespace.is_none_or(|ns| entry.status.meta.namespace == ns))
        .map(|entry| PodListing {
            last_events: sorted_last_events(pleg.last_events(entry.status.uid())),
            status: (*entry.status).clone(),
            error: entry.error.map(|e| e.to_string()),
        })
        .collect();
    fn order(l: &PodListing) -> (&str, &str, &PodUid) {
        let m = &l.status.meta;
        (&m.namespace, &m.name, &m.uid)
    }
    listings.sort_by(|a, b| order(a).cmp(&order(b)));
    listings
}

/// One cached pod of an embedded generator; `None` when it is not cached.
/// What `GetPodStatus` answers.
pub fn pod_listing(pleg: &GenericPleg, uid: &PodUid) -> Option<PodListing> {
    pleg.cache().get(uid).map(|entry| PodListing {
        last_events: sorted_last_events(pleg.last_events(uid)),
        status: (*entry.status).clone(),
        error: entry.error.map(|e| e.to_string()),
    })
}

fn sorted_last_events(mut events: Vec<LastEvent>) -> Vec<LastEvent> {
    events.sort_by(|a, b| a.id.cmp(&b.id));
    events
}

/// The daemon's health, as `Health` answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
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

// --- conversions: our model to protobuf ---

/// Nanoseconds since the Unix epoch, saturating outside what an `i64` holds
/// (before 1677 or after 2262).
fn unix_nanos(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

fn event_type_to_pb(kind: EventType) -> pb::EventType {
    match kind {
        EventType::ContainerStarted => pb::EventType::ContainerStarted,
        EventType::ContainerDied => pb::EventType::ContainerDied,
        EventType::ContainerRemoved => pb::EventType::ContainerRemoved,
        EventType::PodSync => pb::EventType::PodSync,
        EventType::ContainerChanged => pb::EventType::ContainerChanged,
        EventType::ConditionMet => pb::EventType::ConditionMet,
    }
}

fn source_to_pb(source: EventSource) -> pb::Source {
    match source {
        EventSource::Relist => pb::Source::Relist,
        EventSource::Stream => pb::Source::Stream,
    }
}

fn entry_kind_to_pb(kind: EntryKind) -> pb::EntryKind {
    match kind {
        EntryKind::Sandbox => pb::EntryKind::Sandbox,
        EntryKind::Container => pb::EntryKind::Container,
    }
}

fn state_to_pb(state: ContainerState) -> pb::ContainerState {
    match state {
        ContainerState::Created => pb::ContainerState::Created,
        ContainerState::Running => pb::ContainerState::Running,
        ContainerState::Exited => pb::ContainerState::Exited,
        ContainerState::Unknown => pb::ContainerState::Unknown,
    }
}

fn mode_to_pb(mode: Mode) -> pb::Mode {
    match mode {
        Mode::Evented => pb::Mode::Evented,
        Mode::Generic => pb::Mode::Generic,
    }
}

fn stream_state_to_pb(state: StreamState) -> pb::StreamState {
    match state {
        StreamState::Stopped => pb::StreamState::Stopped,
        StreamState::Connecting => pb::StreamState::Connecting,
        StreamState::Streaming => pb::StreamState::Streaming,
        StreamState::Backoff => pb::StreamState::Backoff,
        StreamState::Fallback => pb::StreamState::Fallback,
    }
}

fn pod_to_pb(meta: &PodMeta) -> pb::Pod {
    pb::Pod {
        uid: meta.uid.to_string(),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        labels: meta.labels.clone(),
    }
}

fn event_to_pb(event: &PodLifecycleEvent) -> pb::LifecycleEvent {
    pb::LifecycleEvent {
        r#type: event_type_to_pb(event.kind).into(),
        pod: Some(pod_to_pb(&event.pod)),
        container: event.container.as_ref().map(|c| pb::ContainerRef {
            id: c.id.to_string(),
            name: c.name.clone(),
            attempt: c.attempt,
            kind: entry_kind_to_pb(c.kind).into(),
        }),
        exit_code: event.exit_code,
        reason: event.reason.clone(),
        source: source_to_pb(event.source).into(),
        observed_at_unix_nanos: unix_nanos(event.observed_at),
        runtime_time_unix_nanos: event.runtime_time.map(unix_nanos),
    }
}

fn delivery_to_pb(delivery: &Delivery) -> pb::Event {
    let item = match delivery {
        Delivery::Event(event) => pb::event::Item::Lifecycle(event_to_pb(event)),
        Delivery::Resync { missed } => pb::event::Item::Resync(pb::Resync { missed: *missed }),
    };
    pb::Event { item: Some(item) }
}

fn last_event_to_pb(last: &LastEvent) -> pb::LastEvent {
    pb::LastEvent {
        container_id: last.id.to_string(),
        r#type: event_type_to_pb(last.kind).into(),
        at_unix_nanos: unix_nanos(last.at),
        source: source_to_pb(last.source).into(),
    }
}

fn container_to_pb(c: &Container, last: Option<&LastEvent>) -> pb::ContainerStatus {
    pb::ContainerStatus {
        id: c.id.to_string(),
        name: c.name.clone(),
        attempt: c.attempt,
        state: state_to_pb(c.state).into(),
        created_at_unix_nanos: c.created_at.map(unix_nanos),
        started_at_unix_nanos: c.started_at.map(unix_nanos),
        finished_at_unix_nanos: c.finished_at.map(unix_nanos),
        exit_code: c.exit_code,
        reason: c.reason.clone(),
        image: c.image.clone(),
        last_event: last.map(last_event_to_pb),
    }
}

fn listing_to_pb(listing: &PodListing) -> pb::PodStatus {
    let status = &listing.status;
    let entries = |list: &[Container]| -> Vec<pb::ContainerStatus> {
        list.iter()
            .map(|c| container_to_pb(c, listing.last_event(&c.id)))
            .collect()
    };
    pb::PodStatus {
        pod: Some(pod_to_pb(&status.meta)),
        sandboxes: entries(&status.sandboxes),
        containers: entries(&status.containers),
        ips: status.ips.clone(),
        runtime_time_unix_nanos: status.timestamp.map(unix_nanos),
        error: listing.error.clone(),
        other_last_events: listing
            .last_events
            .iter()
            .filter(|e| status.find(&e.id).is_none())
            .map(last_event_to_pb)
            .collect(),
    }
}

fn health_to_pb(health: &Health) -> pb::HealthResponse {
    pb::HealthResponse {
        healthy: health.healthy,
        checks: health
            .checks
            .iter()
            .map(|c| pb::HealthCheck {
                name: c.name.clone(),
                ok: c.ok,
                message: c.message.clone(),
            })
            .collect(),
        mode: mode_to_pb(health.mode).into(),
        stream_state: stream_state_to_pb(health.stream_state).into(),
    }
}

/// The subscription a `Watch` request asks for, or `InvalidArgument` naming
/// the field and value that is wrong.
fn subscribe_options(request: &pb::WatchRequest) -> Result<SubscribeOptions, Status> {
    let invalid = |message: String| Status::invalid_argument(message);
    let capacity = match usize::try_from(request.capacity) {
        Ok(0) => DEFAULT_CAPACITY,
        Ok(c) if c <= MAX_CAPACITY => c,
        _ => {
            return Err(invalid(format!(
                "capacity {} is above the maximum of {MAX_CAPACITY} events",
                request.capacity
            )));
        }
    };
    let mut kinds = std::collections::HashSet::new();
    for (i, &value) in request.kinds.iter().enumerate() {
        let known = pb::EventType::try_from(value)
            .map_err(|_| invalid(format!("kinds[{i}]: unknown event type {value}")))?;
        let kind = event_type_from_pb(known).ok_or_else(|| {
            invalid(format!(
                "kinds[{i}] is {}, which is not an event type",
                known.as_str_name()
            ))
        })?;
        kinds.insert(kind);
    }
    if kinds.contains(&EventType::ContainerChanged) && !request.include_container_changed {
        return Err(invalid(
            "kinds lists EVENT_TYPE_CONTAINER_CHANGED but include_container_changed is false, \
             so it would never be delivered; set include_container_changed"
                .to_string(),
        ));
    }
    let mut pod_uids = std::collections::HashSet::new();
    for (i, uid) in request.pod_uids.iter().enumerate() {
        if uid.is_empty() {
            return Err(invalid(format!("pod_uids[{i}] is empty")));
        }
        pod_uids.insert(PodUid::new(uid));
    }
    Ok(SubscribeOptions {
        capacity,
        filter: Filter {
            pod_uids: (!pod_uids.is_empty()).then_some(pod_uids),
            namespace: (!request.namespace.is_empty()).then(|| request.namespace.clone()),
            labels: request.labels.clone(),
            kinds: (!kinds.is_empty()).then_some(kinds),
            include_container_changed: request.include_container_changed,
        },
    })
}

// --- conversions: protobuf to our model (the client's side) ---

fn event_type_from_pb(kind: pb::EventType) -> Option<EventType> {
    match kind {
        pb::EventType::Unspecified => None,
        pb::EventType::ContainerStarted => Some(EventType::ContainerStarted),
        pb::EventType::ContainerDied => Some(EventType::ContainerDied),
        pb::EventType::ContainerRemoved => Some(EventType::ContainerRemoved),
        pb::EventType::PodSync => Some(EventType::PodSync),
        pb::EventType::ContainerChanged => Some(EventType::ContainerChanged),
        pb::EventType::ConditionMet => Some(EventType::ConditionMet),
    }
}

/// Decodes an enum field, naming the field and the value when it is unknown
/// or unspecified.
fn decode_enum<P, T>(
    field: &str,
    value: i32,
    decode: impl FnOnce(P) -> Option<T>,
) -> Result<T, String>
where
    P: TryFrom<i32>,
{
    P::try_from(value)
        .ok()
        .and_then(decode)
        .ok_or_else(|| format!("{field}: unknown or unspecified value {value}"))
}

fn event_type_field(field: &str, value: i32) -> Result<EventType, String> {
    decode_enum(field, value, event_type_from_pb)
}

fn source_field(field: &str, value: i32) -> Result<EventSource, String> {
    decode_enum(field, value, |s: pb::Source| match s {
        pb::Source::Unspecified => None,
        pb::Source::Relist => Some(EventSource::Relist),
        pb::Source::Stream => Some(EventSource::Stream),
    })
}

fn time_field(field: &str, nanos: i64) -> Result<SystemTime, String> {
    let offset = Duration::from_nanos(nanos.unsigned_abs());
    let time = if nanos >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    };
    time.ok_or_else(|| format!("{field}: {nanos} ns since the epoch is out of range"))
}

fn optional_time_field(field: &str, nanos: Option<i64>) -> Result<Option<SystemTime>, String> {
    nanos.map(|n| time_field(field, n)).transpose()
}

fn pod_from_pb(field: &str, pod: Option<pb::Pod>) -> Result<PodMeta, String> {
    let pod = pod.ok_or_else(|| format!("{field} is missing"))?;
    if pod.uid.is_empty() {
        return Err(format!("{field}.uid is empty"));
    }
    Ok(PodMeta {
        uid: PodUid::new(pod.uid),
        name: pod.name,
        namespace: pod.namespace,
        labels: pod.labels,
    })
}

fn event_from_pb(event: pb::LifecycleEvent) -> Result<PodLifecycleEvent, String> {
    let container = event
        .container
        .map(|c| {
            let kind = decode_enum("event.container.kind", c.kind, |k: pb::EntryKind| match k {
                pb::EntryKind::Unspecified => None,
                pb::EntryKind::Sandbox => Some(EntryKind::Sandbox),
                pb::EntryKind::Container => Some(EntryKind::Container),
            })?;
            Ok::<_, String>(ContainerRef {
                id: c.id.into(),
                name: c.name,
                attempt: c.attempt,
                kind,
            })
        })
        .transpose()?;
    Ok(PodLifecycleEvent {
        pod: Arc::new(pod_from_pb("event.pod", event.pod)?),
        kind: event_type_field("event.type", event.r#type)?,
        container,
        exit_code: event.exit_code,
        reason: event.reason,
        source: source_field("event.source", event.source)?,
        runtime_time: optional_time_field("event.runtime_time", event.runtime_time_unix_nanos)?,
        observed_at: time_field("event.observed_at", event.observed_at_unix_nanos)?,
    })
}

fn delivery_from_pb(event: pb::Event) -> Result<Delivery, String> {
    match event.item {
        Some(pb::event::Item::Lifecycle(e)) => Ok(Delivery::Event(Arc::new(event_from_pb(e)?))),
        Some(pb::event::Item::Resync(r)) => Ok(Delivery::Resync { missed: r.missed }),
        None => Err("an Event with neither lifecycle nor resync set".to_string()),
    }
}

fn last_event_from_pb(field: &str, last: pb::LastEvent) -> Result<LastEvent, String> {
    Ok(LastEvent {
        id: last.container_id.into(),
        kind: event_type_field(&format!("{field}.type"), last.r#type)?,
        at: time_field(&format!("{field}.at"), last.at_unix_nanos)?,
        source: source_field(&format!("{field}.source"), last.source)?,
    })
}

fn container_from_pb(
    field: &str,
    c: pb::ContainerStatus,
    last_events: &mut Vec<LastEvent>,
) -> Result<Container, String> {
    // A state this client does not know (a newer daemon) is what the model
    // calls unknown: "a value we did not recognise".
    let state = match pb::ContainerState::try_from(c.state) {
        Ok(pb::ContainerState::Created) => ContainerState::Created,
        Ok(pb::ContainerState::Running) => ContainerState::Running,
        Ok(pb::ContainerState::Exited) => ContainerState::Exited,
        Ok(pb::ContainerState::Unknown | pb::ContainerState::Unspecified) | Err(_) => {
            ContainerState::Unknown
        }
    };
    if let Some(last) = c.last_event {
        let mut last = last_event_from_pb(&format!("{field}.last_event"), last)?;
        // The entry's own ID is authoritative; an empty `container_id` here
        // is redundant rather than wrong.
        last.id = c.id.as_str().into();
        last_events.push(last);
    }
    Ok(Container {
        id: c.id.into(),
        name: c.name,
        attempt: c.attempt,
        state,
        created_at: optional_time_field(&format!("{field}.created_at"), c.created_at_unix_nanos)?,
        started_at: optional_time_field(&format!("{field}.started_at"), c.started_at_unix_nanos)?,
        finished_at: optional_time_field(
            &format!("{field}.finished_at"),
            c.finished_at_unix_nanos,
        )?,
        exit_code: c.exit_code,
        reason: c.reason,
        image: c.image,
    })
}

fn listing_from_pb(status: pb::PodStatus) -> Result<PodListing, String> {
    let meta = Arc::new(pod_from_pb("pod_status.pod", status.pod)?);
    let uid = meta.uid.clone();
    let mut last_events = Vec::new();
    let mut entries = |what: &str, list: Vec<pb::ContainerStatus>| {
        list.into_iter()
            .enumerate()
            .map(|(i, c)| {
                container_from_pb(&format!("pod {uid}: {what}[{i}]"), c, &mut last_events)
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let sandboxes = entries("sandboxes", status.sandboxes)?;
    let containers = entries("containers", status.containers)?;
    for (i, last) in status.other_last_events.into_iter().enumerate() {
        last_events.push(last_event_from_pb(
            &format!("pod {uid}: other_last_events[{i}]"),
            last,
        )?);
    }
    Ok(PodListing {
        status: PodStatus {
            sandboxes,
            containers,
            ips: status.ips,
            timestamp: optional_time_field(
                &format!("pod {uid}: runtime_time"),
                status.runtime_time_unix_nanos,
            )?,
            meta,
        },
        error: status.error,
        last_events: sorted_last_events(last_events),
    })
}

fn health_from_pb(health: pb::HealthResponse) -> Result<Health, String> {
    let mode = decode_enum("health.mode", health.mode, |m: pb::Mode| match m {
        pb::Mode::Unspecified => None,
        pb::Mode::Evented => Some(Mode::Evented),
        pb::Mode::Generic => Some(Mode::Generic),
    })?;
    let stream_state = decode_enum(
        "health.stream_state",
        health.stream_state,
        |s: pb::StreamState| match s {
            pb::StreamState::Unspecified => None,
            pb::StreamState::Stopped => Some(StreamState::Stopped),
            pb::StreamState::Connecting => Some(StreamState::Connecting),
            pb::StreamState::Streaming => Some(StreamState::Streaming),
            pb::StreamState::Backoff => Some(StreamState::Backoff),
            pb::StreamState::Fallback => Some(StreamState::Fallback),
        },
    )?;
    Ok(Health {
        healthy: health.healthy,
        checks: health
            .checks
            .into_iter()
            .map(|c| HealthCheck {
                name: c.name,
                ok: c.ok,
                message: c.message,
            })
            .collect(),
        mode,
        stream_state,
    })
}

/// The `Watch` request for a library filter. The wire reads an empty list
/// as "everything", so a filter that selects nothing cannot be expressed and
/// is refused rather than widened.
fn watch_request(filter: &Filter, capacity: usize) -> Result<pb::WatchRequest, String> {
    let capacity = u32::try_from(capacity)
        .ok()
        .filter(|c| *c as usize <= MAX_CAPACITY)
        .ok_or_else(|| format!("capacity {capacity} is above the maximum of {MAX_CAPACITY}"))?;
    let mut pod_uids: Vec<String> = match &filter.pod_uids {
        Some(uids) if uids.is_empty() => {
            return Err("filter.pod_uids is an empty set, which selects no pod".to_string());
        }
        Some(uids) => uids.iter().map(|u| u.to_string()).collect(),
        None => Vec::new(),
    };
    pod_uids.sort();
    let mut kinds: Vec<EventType> = match &filter.kinds {
        Some(kinds) if kinds.is_empty() => {
            return Err("filter.kinds is an empty set, which selects no event".to_string());
        }
        Some(kinds) => kinds.iter().copied().collect(),
        None => Vec::new(),
    };
    kinds.sort();
    let namespace = match &filter.namespace {
        Some(ns) if ns.is_empty() => {
            return Err(
                "filter.namespace is empty; the daemon reads an empty namespace as every namespace"
                    .to_string(),
            );
        }
        Some(ns) => ns.clone(),
        None => String::new(),
    };
    Ok(pb::WatchRequest {
        pod_uids,
        namespace,
        labels: filter.labels.clone(),
        kinds: kinds
            .into_iter()
            .map(|k| event_type_to_pb(k).into())
            .collect(),
        include_container_changed: filter.include_container_changed,
        capacity,
    })
}

// --- the server ---

/// The `pleg.v1.Pleg` service over a [`Daemon`]. [`serve`] runs it on a
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

/// Why [`serve`] failed. Every variant names the socket.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A server answers on the socket already.
    #[error("gRPC socket {}: another server is already listening there (a pleg daemon running?)", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket exists at the path; it is left alone.
    #[error("gRPC socket {}: the path exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The path could not be examined, or an existing socket could not be
    /// probed.
    #[error("gRPC socket {}: cannot check the existing path: {source}", path.display())]
    Inspect {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A stale socket file (nobody listening) could not be removed.
    #[error("gRPC socket {}: cannot remove the stale socket file: {source}", path.display())]
    RemoveStale {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Binding the socket failed (no such directory, no permission, ...).
    #[error("gRPC socket {}: bind failed: {source}", path.display())]
    Bind {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The socket could not be restricted to mode 0600; it was removed.
    #[error("gRPC socket {}: cannot set mode 0600: {source}", path.display())]
    Permissions {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The server failed while serving.
    #[error("gRPC socket {}: serving failed: {source}", path.display())]
    Serve {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: tonic::transport::Error,
    },
}

/// Serves the `pleg.v1.Pleg` API for `daemon` on the unix socket `socket`
/// until `shutdown` completes. See the module docs for the socket's checks
/// and what happens at shutdown.
pub async fn serve(
    daemon: Daemon,
    socket: &Path,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_bound(daemon, bind(socket).await?, shutdown).await
}

/// A socket bound by [`bind`], ready for [`serve_bound`].
pub struct BoundSocket {
    listener: UnixListener,
    identity: SocketFile,
    path: std::path::PathBuf,
}

impl BoundSocket {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Binds the API's socket (refusing a live one, replacing a stale one,
/// mode 0600), so that a daemon can fail before it starts anything else.
pub async fn bind(socket: &Path) -> Result<BoundSocket, ServeError> {
    let listener = bind_listener(socket).await?;
    let identity = SocketFile::of(socket).map_err(|source| ServeError::Inspect {
        path: socket.to_path_buf(),
        source,
    })?;
    Ok(BoundSocket {
        listener,
        identity,
        path: socket.to_path_buf(),
    })
}

/// Serves on a bound socket until `shutdown`, then removes the socket.
pub async fn serve_bound(
    daemon: Daemon,
    bound: BoundSocket,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let BoundSocket {
        listener,
        identity,
        path,
    } = bound;
    let socket = path.as_path();
    tracing::info!(socket = %socket.display(), "gRPC API listening");
    let service = PlegService::new(daemon);
    let ending = service.ending.clone();
    let signal = {
        let ending = ending.clone();
        async move {
            shutdown.await;
            ending.cancel();
        }
    };
    let serving = tonic::transport::Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(Incoming { listener }, signal);
    // Once shut down, connections get DRAIN_GRACE to close after their
    // Watch streams ended; a client that keeps a unary call hanging longer
    // is left behind.
    let give_up = async {
        ending.cancelled().await;
        tokio::time::sleep(DRAIN_GRACE).await;
    };
    let served = tokio::select! {
        served = serving => Some(served),
        () = give_up => None,
    };
    identity.remove_if_unchanged(socket);
    match served {
        Some(Ok(())) => {
            tracing::info!(socket = %socket.display(), "gRPC API stopped");
            Ok(())
        }
        Some(Err(source)) => Err(ServeError::Serve {
            path: socket.to_path_buf(),
            source,
        }),
        None => {
            tracing::warn!(
                socket = %socket.display(),
                "gRPC API stopped with connections still open after {DRAIN_GRACE:?}"
            );
            Ok(())
        }
    }
}

/// Binds the socket: refuses a live one, replaces a stale one, sets 0600.
async fn bind_listener(socket: &Path) -> Result<UnixListener, ServeError> {
    let path = || socket.to_path_buf();
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            let probe = tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(socket)).await;
            match probe {
                // Connected, or the connection hangs in a full backlog:
                // someone is there.
                Ok(Ok(_)) | Err(_) => return Err(ServeError::InUse { path: path() }),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Err(ServeError::InUse { path: path() });
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tracing::info!(socket = %socket.display(), "removing a stale socket file");
                    std::fs::remove_file(socket).map_err(|source| ServeError::RemoveStale {
                        path: path(),
                        source,
                    })?;
                }
                Ok(Err(source)) => {
                    return Err(ServeError::Inspect {
                        path: path(),
                        source,
                    });
                }
            }
        }
        Ok(_) => return Err(ServeError::NotASocket { path: path() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ServeError::Inspect {
                path: path(),
                source,
            });
        }
    }
    let listener = UnixListener::bind(socket).map_err(|source| ServeError::Bind {
        path: path(),
        source,
    })?;
    if let Err(source) = std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)) {
        drop(listener);
        let _ = std::fs::remove_file(socket);
        return Err(ServeError::Permissions {
            path: path(),
            source,
        });
    }
    Ok(listener)
}

/// Which file a socket path named when we bound it, so that shutting down
/// never removes a socket another server has bound since.
#[derive(Clone, Copy, Debug)]
struct SocketFile {
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn of(path: &Path) -> std::io::Result<SocketFile> {
        let meta = std::fs::symlink_metadata(path)?;
        Ok(SocketFile {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    fn remove_if_unchanged(self, path: &Path) {
        if let Ok(now) = SocketFile::of(path)
            && now.dev == self.dev
            && now.ino == self.ino
            && let Err(e) = std::fs::remove_file(path)
        {
            tracing::warn!(socket = %path.display(), "cannot remove the socket file: {e}");
        }
    }
}

/// The accepted connections.
struct Incoming {
    listener: UnixListener,
}

impl Stream for Incoming {
    type Item = std::io::Result<UnixStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .listener
            .poll_accept(cx)
            .map(|accepted| Some(accepted.map(|(stream, _)| stream)))
    }
}

// --- the client ---

/// Why talking to a pleg daemon failed. Every variant names the socket.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing exists at the socket path (is the daemon running?).
    #[error("pleg daemon socket {}: no such socket (is `pleg run` running?)", socket.display())]
    NoSocket {
        /// The socket path.
        socket: PathBuf,
    },
    /// Something other than a socket exists at the path.
    #[error("pleg daemon socket {}: exists but is not a unix socket", socket.display())]
    NotASocket {
        /// The path.
        socket: PathBuf,
    },
    /// The path is not valid UTF-8, which the gRPC transport needs.
    #[error("pleg daemon socket {}: the path is not valid UTF-8", socket.display())]
    InvalidPath {
        /// The path.
        socket: PathBuf,
    },
    /// The socket exists but the connection failed (nobody listens, no
    /// permission, ...).
    #[error("pleg daemon socket {}: cannot connect: {message}", socket.display())]
    Unreachable {
        /// The socket path.
        socket: PathBuf,
        /// What the connection attempt said.
        message: String,
    },
    /// Something answers, but not as a pleg daemon (`pleg.v1.Pleg/Health`).
    #[error("pleg daemon socket {}: not a pleg daemon: expected an answer to pleg.v1.Pleg/Health, got {message}", socket.display())]
    NotPleg {
        /// The socket path.
        socket: PathBuf,
        /// What came back.
        message: String,
    },
    /// A call failed.
    #[error("pleg daemon at {}: {call} failed: {code:?}: {message}", socket.display())]
    Rpc {
        /// The socket path.
        socket: PathBuf,
        /// The call, for example `Watch`.
        call: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The daemon's (or the transport's) message.
        message: String,
    },
    /// The request cannot be expressed on the wire.
    #[error("pleg daemon at {}: invalid {call} request: {reason}", socket.display())]
    InvalidRequest {
        /// The socket path.
        socket: PathBuf,
        /// The call.
        call: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The daemon sent something this client cannot read (a newer daemon?).
    #[error("pleg daemon at {}: {call}: unreadable answer: {reason}", socket.display())]
    Protocol {
        /// The socket path.
        socket: PathBuf,
        /// The call.
        call: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// A client of a `pleg run` daemon, for `pleg watch --daemon` and
/// `pleg pods --daemon`. Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    inner: pb::pleg_client::PlegClient<Channel>,
}

impl Client {
    /// Connects to the daemon at `socket` and checks that it is one (it asks
    /// `Health`). Fails naming the socket when it is missing, is not a
    /// socket, nobody listens, or what listens is not a pleg daemon.
    pub async fn connect(socket: &Path) -> Result<Client, ClientError> {
        let socket_buf = socket.to_path_buf();
        match std::fs::metadata(socket) {
            Ok(meta) if meta.file_type().is_socket() => {}
            Ok(_) => return Err(ClientError::NotASocket { socket: socket_buf }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ClientError::NoSocket { socket: socket_buf });
            }
            Err(e) => {
                return Err(ClientError::Unreachable {
                    socket: socket_buf,
                    message: e.to_string(),
                });
            }
        }
        let text = socket.to_str().ok_or_else(|| ClientError::InvalidPath {
            socket: socket_buf.clone(),
        })?;
        let channel = Endpoint::from_shared(format!("unix://{text}"))
            .map_err(|e| ClientError::InvalidPath {
                socket: PathBuf::from(format!("{text} ({e})")),
            })?
            .connect_timeout(CLIENT_TIMEOUT)
            .connect()
            .await
            .map_err(|e| ClientError::Unreachable {
                socket: socket_buf.clone(),
                message: error_chain(&e),
            })?;
        let mut client = Client {
            socket: socket_buf,
            inner: pb::pleg_client::PlegClient::new(channel),
        };
        if let Err(status) = client.inner.health(unary(pb::HealthRequest {})).await {
            return Err(ClientError::NotPleg {
                socket: client.socket,
                message: format!("{:?}: {}", status.code(), status.message()),
            });
        }
        Ok(client)
    }

    /// The daemon's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Subscribes to the daemon's events that pass `filter`, with a queue of
    /// `capacity` events on the daemon's side (0: the default, 1000; at most
    /// [`MAX_CAPACITY`]). The stream yields the same [`Delivery`] items an
    /// embedded subscription does, and ends when the daemon shuts down.
    ///
    /// A filter that selects nothing (an empty `pod_uids` or `kinds` set, an
    /// empty namespace) cannot be sent and is refused.
    pub async fn watch(
        &mut self,
        filter: &Filter,
        capacity: usize,
    ) -> Result<WatchStream, ClientError> {
        let request =
            watch_request(filter, capacity).map_err(|reason| ClientError::InvalidRequest {
                socket: self.socket.clone(),
                call: "Watch",
                reason,
            })?;
        let events = self
            .inner
            .watch(request)
            .await
            .map_err(|status| self.rpc_error("Watch", &status))?
            .into_inner();
        Ok(WatchStream {
            socket: self.socket.clone(),
            events,
        })
    }

    /// Every pod in the daemon's cache (only those in `namespace`, if
    /// given), sorted by namespace, name and UID.
    pub async fn list_pods(
        &mut self,
        namespace: Option<&str>,
    ) -> Result<Vec<PodListing>, ClientError> {
        let request = pb::ListPodsRequest {
            namespace: namespace.unwrap_or_default().to_string(),
        };
        let answer = self
            .inner
            .list_pods(unary(request))
            .await
            .map_err(|status| self.rpc_error("ListPods", &status))?
            .into_inner();
        answer
            .pods
            .into_iter()
            .map(|p| listing_from_pb(p).map_err(|reason| self.protocol_error("ListPods", reason)))
            .collect()
    }

    /// One pod from the daemon's cache; `None` when the daemon does not have
    /// it.
    pub async fn pod_status(&mut self, uid: &PodUid) -> Result<Option<PodListing>, ClientError> {
        let request = pb::GetPodStatusRequest {
            uid: uid.to_string(),
        };
        match self.inner.get_pod_status(unary(request)).await {
            Ok(answer) => listing_from_pb(answer.into_inner())
                .map(Some)
                .map_err(|reason| self.protocol_error("GetPodStatus", reason)),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(self.rpc_error("GetPodStatus", &status)),
        }
    }

    /// The daemon's health.
    pub async fn health(&mut self) -> Result<Health, ClientError> {
        let answer = self
            .inner
            .health(unary(pb::HealthRequest {}))
            .await
            .map_err(|status| self.rpc_error("Health", &status))?
            .into_inner();
        health_from_pb(answer).map_err(|reason| self.protocol_error("Health", reason))
    }

    fn rpc_error(&self, call: &'static str, status: &Status) -> ClientError {
        ClientError::Rpc {
            socket: self.socket.clone(),
            call,
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    fn protocol_error(&self, call: &'static str, reason: String) -> ClientError {
        ClientError::Protocol {
            socket: self.socket.clone(),
            call,
            reason,
        }
    }
}

/// A unary request with the client's deadline.
fn unary<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(CLIENT_TIMEOUT);
    request
}

/// An error and its sources, as one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The client side of a `Watch` call. Dropping it cancels the call, and the
/// daemon unsubscribes.
///
/// An item the client cannot read (from a newer daemon) comes out as an
/// `Err(ClientError::Protocol)` and the stream carries on; a broken
/// connection comes out as an `Err(ClientError::Rpc)` and ends it. `None`
/// means the daemon ended the stream cleanly (it shut down).
#[derive(Debug)]
pub struct WatchStream {
    socket: PathBuf,
    events: tonic::Streaming<pb::Event>,
}

impl WatchStream {
    /// Waits for the next delivery.
    pub async fn next(&mut self) -> Option<Result<Delivery, ClientError>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for WatchStream {
    type Item = Result<Delivery, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = match Pin::new(&mut this.events).poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        Poll::Ready(item.map(|answer| match answer {
            Ok(event) => delivery_from_pb(event).map_err(|reason| ClientError::Protocol {
                socket: this.socket.clone(),
                call: "Watch",
                reason,
            }),
            Err(status) => Err(ClientError::Rpc {
                socket: this.socket.clone(),
                call: "Watch",
                code: status.code(),
                message: status.message().to_string(),
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> PodLifecycleEvent {
        let pod = Arc::new(PodMeta::new("uid-1", "web", "shop").with_label("app", "web"));
        let mut e = PodLifecycleEvent::new(pod, EventType::ContainerDied, EventSource::Stream);
        e.container = Some(ContainerRef {
            id: "ctr-1".into(),
            name: "nginx".into(),
            attempt: 2,
            kind: EntryKind::Container,
        });
        e.exit_code = Some(137);
        e.reason = Some("OOMKilled".into());
        e.runtime_time = Some(UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789));
        e
    }

    #[test]
    fn an_event_survives_the_round_trip_through_protobuf() {
        let original = Delivery::Event(Arc::new(event()));
        let back = delivery_from_pb(delivery_to_pb(&original)).expect("readable");
        assert_eq!(back, original);
        let resync = Delivery::Resync { missed: 7 };
        assert_eq!(delivery_from_pb(delivery_to_pb(&resync)), Ok(resync));
    }

    #[test]
    fn times_before_the_epoch_and_beyond_i64_are_kept_or_saturated() {
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(unix_nanos(before), -5_000_000_000);
        assert_eq!(time_field("t", -5_000_000_000), Ok(before));
        let far = UNIX_EPOCH + Duration::from_secs(400 * 365 * 24 * 3600);
        assert_eq!(unix_nanos(far), i64::MAX);
    }

    #[test]
    fn a_listing_survives_the_round_trip_with_the_last_events_of_gone_containers() {
        let meta = Arc::new(PodMeta::new("uid-1", "web", "shop"));
        let mut status = PodStatus::new(meta);
        status
            .sandboxes
            .push(Container::new("sb-1", "web", ContainerState::Running));
        let mut app = Container::new("ctr-2", "app", ContainerState::Exited).with_exit(3, "Error");
        app.image = "busybox".into();
        app.created_at = Some(UNIX_EPOCH + Duration::from_secs(10));
        status.containers.push(app);
        status.ips = vec!["10.0.0.1".into()];
        let at = UNIX_EPOCH + Duration::from_secs(20);
        let last = |id: &str, kind| LastEvent {
            id: id.into(),
            kind,
            at,
            source: EventSource::Relist,
        };
        let listing = PodListing {
            status,
            error: Some("runtime call PodStatus failed: boom".into()),
            last_events: vec![
                last("ctr-1", EventType::ContainerRemoved),
                last("ctr-2", EventType::ContainerDied),
                last("sb-1", EventType::ContainerStarted),
            ],
        };
        let wire = listing_to_pb(&listing);
        assert_eq!(wire.other_last_events.len(), 1, "ctr-1 is gone");
        assert_eq!(listing_from_pb(wire), Ok(listing));
    }

    #[test]
    fn watch_requests_are_checked_field_by_field() {
        let base = pb::WatchRequest::default();
        let options = subscribe_options(&base).expect("the empty request takes everything");
        assert_eq!(options, SubscribeOptions::default());
        let bad_kind = pb::WatchRequest {
            kinds: vec![pb::EventType::ContainerDied.into(), 42],
            ..base.clone()
        };
        let err = subscribe_options(&bad_kind).expect_err("unknown kind");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(err.message(), "kinds[1]: unknown event type 42");
        let unspecified = pb::WatchRequest {
            kinds: vec![0],
            ..base.clone()
        };
        let err = subscribe_options(&unspecified).expect_err("unspecified kind");
        assert!(
            err.message().contains("EVENT_TYPE_UNSPECIFIED"),
            "{}",
            err.message()
        );
        let huge = pb::WatchRequest {
            capacity: 1_000_001,
            ..base.clone()
        };
        let err = subscribe_options(&huge).expect_err("capacity");
        assert!(
            err.message().contains("capacity 1000001"),
            "{}",
            err.message()
        );
        let changed = pb::WatchRequest {
            kinds: vec![pb::EventType::ContainerChanged.into()],
            ..base
        };
        assert!(subscribe_options(&changed).is_err());
    }

    #[test]
    fn a_library_filter_becomes_the_same_filter_on_the_daemon() {
        let filter = Filter {
            pod_uids: Some([PodUid::new("a"), PodUid::new("b")].into()),
            namespace: Some("shop".into()),
            labels: [("app".to_string(), "web".to_string())].into(),
            kinds: Some([EventType::ContainerDied, EventType::ContainerChanged].into()),
            include_container_changed: true,
        };
        let request = watch_request(&filter, 5).expect("expressible");
        let options = subscribe_options(&request).expect("valid");
        assert_eq!(
            options,
            SubscribeOptions {
                capacity: 5,
                filter
            }
        );
        let nothing = Filter {
            kinds: Some(Default::default()),
            ..Filter::default()
        };
        assert!(watch_request(&nothing, 0).is_err());
    }
}
