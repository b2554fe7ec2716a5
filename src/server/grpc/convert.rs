//! Conversions between our model and protobuf ([`pb`]), both ways: the
//! server's answers and the `Watch` request it reads, the client's reading
//! of them. Pure functions; protobuf types go no further than this module's
//! parent.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::Status;

use super::{
    Health, HealthCheck, MAX_CAPACITY, MAX_FILTER_LABELS, MAX_FILTER_POD_UIDS, MAX_LABEL_KEY_LEN,
    MAX_LABEL_VALUE_LEN, MAX_NAMESPACE_LEN, MAX_POD_UID_LEN, PodListing, pb, sorted_last_events,
};
use crate::cache::LastEvent;
use crate::event::{ContainerRef, EventSource, EventType, PodLifecycleEvent};
use crate::hub::{
    DEFAULT_CAPACITY, Delivery, Epoch, Filter, ResumeToken, ResyncReason, SubscribeOptions,
};
use crate::model::{Container, ContainerState, EntryKind, PodMeta, PodStatus, PodUid};
use crate::stream::{Mode, StreamState};

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
        started_at_unix_nanos: event.started_at.map(unix_nanos),
        finished_at_unix_nanos: event.finished_at.map(unix_nanos),
    }
}

fn resync_reason_to_pb(reason: ResyncReason) -> pb::ResyncReason {
    match reason {
        ResyncReason::StreamGap => pb::ResyncReason::StreamGap,
        ResyncReason::EpochChanged => pb::ResyncReason::EpochChanged,
        ResyncReason::ReplayExpired => pb::ResyncReason::ReplayExpired,
        _ => pb::ResyncReason::Lagged,
    }
}

/// A delivery on the wire, or `None` for one this watch did not ask for
/// (`Synced` without `initial_state`: an older client would fail on an item
/// it does not know).
pub(super) fn delivery_to_pb(delivery: &Delivery, initial_state: bool) -> Option<pb::Event> {
    let (item, initial) = match delivery {
        Delivery::Event(event) => (pb::event::Item::Lifecycle(event_to_pb(event)), false),
        Delivery::Initial(event) => (pb::event::Item::Lifecycle(event_to_pb(event)), true),
        Delivery::Resync { missed, reason, .. } => (
            pb::event::Item::Resync(pb::Resync {
                missed: *missed,
                reason: resync_reason_to_pb(*reason).into(),
            }),
            false,
        ),
        Delivery::Synced(token) if initial_state => (
            pb::event::Item::Synced(pb::Synced {
                epoch: token.epoch.to_string(),
                seq: token.seq,
            }),
            false,
        ),
        Delivery::Synced(_) => return None,
    };
    let seq = match delivery {
        Delivery::Synced(_) => 0,
        other => other.seq().unwrap_or(0),
    };
    Some(pb::Event {
        item: Some(item),
        seq,
        initial,
    })
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

/// A listing on the wire, with this phase and health (the daemon's, which
/// knows crash loops, or [`PodListing::health`]).
pub(super) fn listing_to_pb(
    listing: &PodListing,
    health: &crate::phase::PodHealth,
) -> pb::PodStatus {
    let status = &listing.status;
    let entries = |list: &[Container]| -> Vec<pb::ContainerStatus> {
        list.iter()
            .map(|c| container_to_pb(c, listing.last_event(&c.id)))
            .collect()
    };
    let answer = pb::PodStatus {
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
        ..pb::PodStatus::default()
    };
    with_health(answer, health)
}

pub(super) fn health_to_pb(health: &Health) -> pb::HealthResponse {
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
/// the field and value that is wrong: `max_capacity` is the daemon's
/// [`Limits::max_capacity`](super::Limits::max_capacity).
pub(super) fn subscribe_options(
    request: &pb::WatchRequest,
    max_capacity: usize,
) -> Result<SubscribeOptions, Status> {
    let invalid = |message: String| Status::invalid_argument(message);
    let capacity = match usize::try_from(request.capacity) {
        Ok(0) => DEFAULT_CAPACITY,
        Ok(c) if c <= max_capacity => c,
        _ => {
            return Err(invalid(format!(
                "capacity {} is above the maximum of {max_capacity} events (the daemon's --grpc-max-capacity)",
                request.capacity
            )));
        }
    };
    check_filter_sizes(request).map_err(invalid)?;
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
    let selector = pod_selector(
        &request.selector,
        &request.namespace_regex,
        &request.name_regex,
    )
    .map_err(invalid)?;
    let resume = if request.epoch.is_empty() {
        None
    } else {
        let epoch = Epoch::named(&request.epoch).map_err(|e| invalid(format!("epoch: {e}")))?;
        Some(ResumeToken::new(epoch, request.since))
    };
    Ok(SubscribeOptions {
        capacity,
        resume,
        initial_state: request.initial_state,
        filter: Filter {
            pod_uids: (!pod_uids.is_empty()).then_some(pod_uids),
            namespace: (!request.namespace.is_empty()).then(|| request.namespace.clone()),
            labels: request.labels.clone(),
            kinds: (!kinds.is_empty()).then_some(kinds),
            selector,
            include_container_changed: request.include_container_changed,
        },
    })
}

/// The longest label selector and the longest regex a request may give.
const MAX_SELECTOR: usize = 4_096;
const MAX_REGEX: usize = 1_024;

/// A request's `selector`, `namespace_regex` and `name_regex` as one
/// selector; the message names the field and, for a selector, the column.
pub(crate) fn pod_selector(
    selector: &str,
    namespace_regex: &str,
    name_regex: &str,
) -> Result<crate::select::PodSelector, String> {
    use crate::select::{LabelSelector, PodSelector};
    let too_long = |field: &str, len: usize, max: usize| {
        format!("{field} is {len} bytes long; at most {max} are allowed")
    };
    if selector.len() > MAX_SELECTOR {
        return Err(too_long("selector", selector.len(), MAX_SELECTOR));
    }
    for (field, regex) in [
        ("namespace_regex", namespace_regex),
        ("name_regex", name_regex),
    ] {
        if regex.len() > MAX_REGEX {
            return Err(too_long(field, regex.len(), MAX_REGEX));
        }
    }
    let labels = LabelSelector::parse(selector).map_err(|e| format!("selector: {e}"))?;
    let mut pods = PodSelector::everything().with_labels(labels);
    if !namespace_regex.is_empty() {
        pods = pods
            .with_namespace_regex(namespace_regex)
            .map_err(|e| format!("namespace_regex: {e}"))?;
    }
    if !name_regex.is_empty() {
        pods = pods
            .with_name_regex(name_regex)
            .map_err(|e| format!("name_regex: {e}"))?;
    }
    Ok(pods)
}

/// The filter's sizes against the API's limits: how many UIDs and labels,
/// how long each string. The message names the field, the count or length,
/// and the limit.
fn check_filter_sizes(request: &pb::WatchRequest) -> Result<(), String> {
    let count = |field: &str, count: usize, max: usize| {
        if count > max {
            Err(format!(
                "{field} has {count} entries; at most {max} are allowed"
            ))
        } else {
            Ok(())
        }
    };
    let length = |field: &dyn std::fmt::Display, text: &str, max: usize| {
        if text.len() > max {
            Err(format!(
                "{field} is {} bytes long; at most {max} are allowed",
                text.len()
            ))
        } else {
            Ok(())
        }
    };
    count("pod_uids", request.pod_uids.len(), MAX_FILTER_POD_UIDS)?;
    count("labels", request.labels.len(), MAX_FILTER_LABELS)?;
    length(&"namespace", &request.namespace, MAX_NAMESPACE_LEN)?;
    for (i, uid) in request.pod_uids.iter().enumerate() {
        length(&format_args!("pod_uids[{i}]"), uid, MAX_POD_UID_LEN)?;
    }
    for (key, value) in &request.labels {
        let shown: String = key.chars().take(40).collect();
        length(
            &format_args!("labels key {shown:?}"),
            key,
            MAX_LABEL_KEY_LEN,
        )?;
        length(
            &format_args!("labels[{shown:?}] value"),
            value,
            MAX_LABEL_VALUE_LEN,
        )?;
    }
    Ok(())
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
        started_at: optional_time_field("event.started_at", event.started_at_unix_nanos)?,
        finished_at: optional_time_field("event.finished_at", event.finished_at_unix_nanos)?,
        seq: crate::event::Seq::default(),
    })
}

pub(super) fn delivery_from_pb(event: pb::Event) -> Result<Delivery, String> {
    let seq = (event.seq != 0).then_some(event.seq);
    match event.item {
        Some(pb::event::Item::Lifecycle(e)) => {
            let e = event_from_pb(e)?;
            if event.initial {
                Ok(Delivery::Initial(Arc::new(e)))
            } else {
                let e = match seq {
                    Some(seq) => e.with_seq(seq),
                    None => e,
                };
                Ok(Delivery::Event(Arc::new(e)))
            }
        }
        Some(pb::event::Item::Resync(r)) => {
            // An older daemon sends no reason: its resyncs are all lags.
            let reason = match pb::ResyncReason::try_from(r.reason) {
                Ok(pb::ResyncReason::StreamGap) => ResyncReason::StreamGap,
                Ok(pb::ResyncReason::EpochChanged) => ResyncReason::EpochChanged,
                Ok(pb::ResyncReason::ReplayExpired) => ResyncReason::ReplayExpired,
                Ok(pb::ResyncReason::Lagged | pb::ResyncReason::Unspecified) => {
                    ResyncReason::Lagged
                }
                Err(_) => return Err(format!("resync.reason: unknown value {}", r.reason)),
            };
            Ok(Delivery::resync(reason, r.missed, seq))
        }
        Some(pb::event::Item::Synced(synced)) => {
            let epoch = Epoch::named(&synced.epoch).map_err(|e| format!("synced.epoch: {e}"))?;
            Ok(Delivery::Synced(ResumeToken::new(epoch, synced.seq)))
        }
        None => Err("an Event with no item set (lifecycle, resync or synced)".to_string()),
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

pub(super) fn listing_from_pb(status: pb::PodStatus) -> Result<PodListing, String> {
    let health = pod_health_from_pb(&status);
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
        health,
        error: status.error,
        last_events: sorted_last_events(last_events),
    })
}

/// The phase and health a daemon answered; `None` when it did not say (an
/// older daemon) or said something this client does not know.
fn pod_health_from_pb(status: &pb::PodStatus) -> Option<crate::phase::PodHealth> {
    use crate::phase::{Health, HealthReason, PodHealth};
    let phase = pb::PodPhase::try_from(status.phase)
        .ok()
        .and_then(phase_from_pb)?;
    let health = match pb::PodHealth::try_from(status.health).ok()? {
        pb::PodHealth::Unspecified => return None,
        pb::PodHealth::Unknown => Health::Unknown,
        pb::PodHealth::Ready => Health::Ready,
        pb::PodHealth::NotReady => Health::NotReady,
        pb::PodHealth::Succeeded => Health::Succeeded,
        pb::PodHealth::Failed => Health::Failed,
    };
    let message = (!status.health_message.is_empty()).then(|| status.health_message.clone());
    Some(PodHealth::from_parts(
        phase,
        health,
        HealthReason::from_name(&status.health_reason),
        message,
    ))
}

pub(super) fn health_from_pb(health: pb::HealthResponse) -> Result<Health, String> {
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
pub(super) fn watch_request(filter: &Filter, capacity: usize) -> Result<pb::WatchRequest, String> {
    let capacity = u32::try_from(capacity)
        .ok()
        .filter(|c| *c as usize <= MAX_CAPACITY)
        .ok_or_else(|| format!("capacity {capacity} is above the maximum of {MAX_CAPACITY}"))?;
    let mut pod_uids: Vec<String> = match &filter.pod_uids {
        Some(uids) if uids.is_empty() => {
            return Err("filter.pod_uids is an empty set, which selects no pod".to_string());
        }
        Some(uids) => uids.iter().map(std::string::ToString::to_string).collect(),
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
        selector: filter.selector.labels.to_string(),
        namespace_regex: filter
            .selector
            .namespace
            .as_ref()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        name_regex: filter
            .selector
            .name
            .as_ref()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        initial_state: false,
        since: 0,
        epoch: String::new(),
    })
}

// --- the toolkit's calls ---

pub(super) fn phase_to_pb(phase: crate::phase::PodPhase) -> pb::PodPhase {
    use crate::phase::PodPhase;
    match phase {
        PodPhase::Pending => pb::PodPhase::Pending,
        PodPhase::Running => pb::PodPhase::Running,
        PodPhase::Succeeded => pb::PodPhase::Succeeded,
        PodPhase::Failed => pb::PodPhase::Failed,
        PodPhase::Unknown => pb::PodPhase::Unknown,
    }
}

fn phase_from_pb(phase: pb::PodPhase) -> Option<crate::phase::PodPhase> {
    use crate::phase::PodPhase;
    match phase {
        pb::PodPhase::Unspecified => None,
        pb::PodPhase::Pending => Some(PodPhase::Pending),
        pb::PodPhase::Running => Some(PodPhase::Running),
        pb::PodPhase::Succeeded => Some(PodPhase::Succeeded),
        pb::PodPhase::Failed => Some(PodPhase::Failed),
        pb::PodPhase::Unknown => Some(PodPhase::Unknown),
    }
}

pub(super) fn health_class_to_pb(health: crate::phase::Health) -> pb::PodHealth {
    use crate::phase::Health;
    match health {
        Health::Unknown => pb::PodHealth::Unknown,
        Health::Ready => pb::PodHealth::Ready,
        Health::NotReady => pb::PodHealth::NotReady,
        Health::Succeeded => pb::PodHealth::Succeeded,
        Health::Failed => pb::PodHealth::Failed,
    }
}

/// Sets a status's phase, health, reason and message.
fn with_health(mut status: pb::PodStatus, health: &crate::phase::PodHealth) -> pb::PodStatus {
    status.phase = phase_to_pb(health.phase).into();
    status.health = health_class_to_pb(health.health).into();
    status.health_reason = health
        .reason
        .map(|r| r.as_str().to_owned())
        .unwrap_or_default();
    status.health_message = health.message.clone().unwrap_or_default();
    status
}

/// The longest a `WaitFor` or `Monitor` may run: a day.
const MAX_TOOLKIT_TIMEOUT_MS: u32 = 86_400_000;

pub(super) fn toolkit_timeout(field: &str, timeout_ms: u32) -> Result<Duration, Status> {
    if timeout_ms == 0 || timeout_ms > MAX_TOOLKIT_TIMEOUT_MS {
        return Err(Status::invalid_argument(format!(
            "{field} is {timeout_ms}; give 1 to {MAX_TOOLKIT_TIMEOUT_MS} milliseconds"
        )));
    }
    Ok(Duration::from_millis(u64::from(timeout_ms)))
}

/// A `PodSelection` as a filter; the messages name the field as
/// `pods.<field>`.
pub(super) fn selection_filter(selection: Option<&pb::PodSelection>) -> Result<Filter, Status> {
    let Some(s) = selection else {
        return Ok(Filter::all());
    };
    let prefixed = |status: Status| Status::invalid_argument(format!("pods.{}", status.message()));
    if !s.name.is_empty() && !s.name_regex.is_empty() {
        return Err(Status::invalid_argument(
            "pods.name and pods.name_regex are both set; give one of them",
        ));
    }
    let name_regex = if s.name.is_empty() {
        s.name_regex.clone()
    } else {
        if s.name.len() > 253 {
            return Err(Status::invalid_argument(format!(
                "pods.name is {} bytes long; at most 253 are allowed",
                s.name.len()
            )));
        }
        regex::escape(&s.name)
    };
    let request = pb::WatchRequest {
        pod_uids: s.pod_uids.clone(),
        namespace: s.namespace.clone(),
        labels: s.labels.clone(),
        selector: s.selector.clone(),
        namespace_regex: s.namespace_regex.clone(),
        name_regex,
        ..pb::WatchRequest::default()
    };
    Ok(subscribe_options(&request, MAX_CAPACITY)
        .map_err(prefixed)?
        .filter)
}

/// A `WaitForRequest`'s condition.
pub(super) fn until_from_pb(request: &pb::WaitForRequest) -> Result<crate::wait::Until, Status> {
    use crate::wait::Until;
    use pb::wait_for_request::Until as Pb;
    let invalid = |m: String| Status::invalid_argument(m);
    match &request.until {
        None => Err(invalid(
            "until is not set; give running_container, all_exited, gone or phase_not".into(),
        )),
        Some(Pb::RunningContainer(name)) if name.is_empty() => Err(invalid(
            "running_container is empty; name the container".into(),
        )),
        Some(Pb::RunningContainer(name)) => Ok(Until::running(name.clone())),
        Some(Pb::AllExited(true)) => Ok(Until::AllExited),
        Some(Pb::Gone(true)) => Ok(Until::Gone),
        Some(Pb::AllExited(false) | Pb::Gone(false)) => Err(invalid(
            "until is all_exited or gone set to false; set it to true".into(),
        )),
        Some(Pb::PhaseNot(set)) => {
            if set.phases.is_empty() {
                return Err(invalid(
                    "phase_not.phases is empty; name at least one phase".into(),
                ));
            }
            let mut phases = Vec::new();
            for (i, &value) in set.phases.iter().enumerate() {
                let phase = pb::PodPhase::try_from(value)
                    .ok()
                    .and_then(phase_from_pb)
                    .ok_or_else(|| {
                        invalid(format!("phase_not.phases[{i}]: {value} is not a pod phase"))
                    })?;
                phases.push(phase);
            }
            Ok(Until::not_in(phases))
        }
    }
}

fn recovery_to_pb(r: &crate::monitor::Recovery) -> pb::Recovery {
    pb::Recovery {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        pod_uid: r.pod_uid.to_string(),
        container: r.container.clone(),
        dead_id: r.dead_id.to_string(),
        died_at_unix_nanos: unix_nanos(r.died_at),
        replacement_id: r.replacement_id.as_ref().map(ToString::to_string),
        replacement_pod_uid: r.replacement_pod_uid.as_ref().map(ToString::to_string),
        replaced_at_unix_nanos: r.replaced_at.map(unix_nanos),
        running_at_unix_nanos: r.running_at.map(unix_nanos),
        recovery_ms: r
            .recovery()
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    }
}

/// A monitor's counts, naming it when it is kept past its call
/// (`monitor_id`, else empty).
pub(super) fn progress_to_pb(
    p: &crate::monitor::MonitorProgress,
    monitor_id: &str,
) -> pb::MonitorUpdate {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    pb::MonitorUpdate {
        item: Some(pb::monitor_update::Item::Progress(pb::MonitorProgress {
            died: count(p.died),
            recovered: count(p.recovered),
            pending: count(p.pending()),
            monitor_id: monitor_id.to_string(),
        })),
    }
}

pub(super) fn report_to_pb(report: &crate::monitor::MonitorReport) -> pb::MonitorUpdate {
    pb::MonitorUpdate {
        item: Some(pb::monitor_update::Item::Report(pb::MonitorReport {
            recovered: report.recovered.iter().map(recovery_to_pb).collect(),
            unrecovered: report.unrecovered.iter().map(recovery_to_pb).collect(),
            error: report.error.as_ref().map(ToString::to_string),
        })),
    }
}

fn resync_to_pb(missed: u64, reason: ResyncReason) -> pb::Resync {
    pb::Resync {
        missed,
        reason: resync_reason_to_pb(reason).into(),
    }
}

pub(super) fn terminal_to_pb(report: &crate::terminal::TerminalReport) -> pb::TerminalReportEvent {
    use crate::terminal::TerminalPhase;
    let phase = match report.phase {
        TerminalPhase::Succeeded => pb::TerminalPhase::Succeeded,
        TerminalPhase::Failed => pb::TerminalPhase::Failed,
        TerminalPhase::Deleted => pb::TerminalPhase::Deleted,
    };
    pb::TerminalReportEvent {
        item: Some(pb::terminal_report_event::Item::Report(
            pb::TerminalReport {
                pod: Some(pod_to_pb(&report.pod)),
                phase: phase.into(),
                containers: report
                    .containers
                    .iter()
                    .map(|c| pb::ContainerOutcome {
                        id: c.id.to_string(),
                        name: c.name.clone(),
                        attempt: c.attempt,
                        exited: c.exited,
                        exit_code: c.exit_code,
                        reason: c.reason.clone(),
                        started_at_unix_nanos: c.started_at.map(unix_nanos),
                        finished_at_unix_nanos: c.finished_at.map(unix_nanos),
                    })
                    .collect(),
                at_unix_nanos: unix_nanos(report.at),
                exit_code: report.exit_code(),
            },
        )),
    }
}

pub(super) fn terminal_resync_to_pb(missed: u64, reason: ResyncReason) -> pb::TerminalReportEvent {
    pb::TerminalReportEvent {
        item: Some(pb::terminal_report_event::Item::Resync(resync_to_pb(
            missed, reason,
        ))),
    }
}

pub(super) fn session_update_to_pb(update: &crate::session::SessionUpdate) -> pb::SessionUpdate {
    use crate::session::SessionUpdate;
    let item = match update {
        SessionUpdate::Event(e) => pb::session_update::Item::Event(pb::SessionEvent {
            session: e.session.clone(),
            component: e.component.clone(),
            event: Some(event_to_pb(&e.event)),
            ip: e.ip.clone(),
            phase: phase_to_pb(e.health.phase).into(),
            health: health_class_to_pb(e.health.health).into(),
            health_reason: e
                .health
                .reason
                .map(|r| r.as_str().to_owned())
                .unwrap_or_default(),
            error: e.error.clone(),
        }),
        SessionUpdate::Resync { missed, reason } => {
            pb::session_update::Item::Resync(resync_to_pb(*missed, *reason))
        }
    };
    pb::SessionUpdate { item: Some(item) }
}

/// A filter's pods as a `PodSelection` (its event kinds do not matter).
pub(super) fn selection_request(filter: &Filter) -> Result<pb::PodSelection, String> {
    let w = watch_request(filter, 1)?;
    Ok(pb::PodSelection {
        pod_uids: w.pod_uids,
        namespace: w.namespace,
        labels: w.labels,
        selector: w.selector,
        namespace_regex: w.namespace_regex,
        name_regex: w.name_regex,
        name: String::new(),
    })
}

fn recovery_from_pb(field: &str, r: pb::Recovery) -> Result<crate::monitor::Recovery, String> {
    if r.pod_uid.is_empty() {
        return Err(format!("{field}.pod_uid is empty"));
    }
    let mut recovery = crate::monitor::Recovery::died(
        &PodMeta::new(r.pod_uid, r.name, r.namespace),
        r.container,
        r.dead_id.into(),
        time_field(&format!("{field}.died_at"), r.died_at_unix_nanos)?,
    );
    recovery.replacement_id = r.replacement_id.map(Into::into);
    recovery.replacement_pod_uid = r.replacement_pod_uid.map(PodUid::new);
    recovery.replaced_at =
        optional_time_field(&format!("{field}.replaced_at"), r.replaced_at_unix_nanos)?;
    recovery.running_at =
        optional_time_field(&format!("{field}.running_at"), r.running_at_unix_nanos)?;
    Ok(recovery)
}

/// What a `Monitor` stream says, read back.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum MonitorItem {
    /// The counts so far.
    Progress(crate::monitor::MonitorProgress),
    /// The end.
    Report(crate::monitor::MonitorReport),
}

pub(super) fn monitor_update_from_pb(update: pb::MonitorUpdate) -> Result<MonitorItem, String> {
    match update.item {
        None => Err("monitor update with no item (from a newer daemon?)".into()),
        Some(pb::monitor_update::Item::Progress(p)) => {
            let count = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
            Ok(MonitorItem::Progress(
                crate::monitor::MonitorProgress::counted(count(p.died), count(p.recovered)),
            ))
        }
        Some(pb::monitor_update::Item::Report(r)) => {
            let list = |what: &str, items: Vec<pb::Recovery>| {
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| recovery_from_pb(&format!("report.{what}[{i}]"), r))
                    .collect::<Result<Vec<_>, _>>()
            };
            Ok(MonitorItem::Report(crate::monitor::MonitorReport {
                recovered: list("recovered", r.recovered)?,
                unrecovered: list("unrecovered", r.unrecovered)?,
                error: r.error.map(crate::monitor::MonitorError::Daemon),
                ..crate::monitor::MonitorReport::default()
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> PodLifecycleEvent {
        let pod = Arc::new(PodMeta::new("uid-1", "web", "shop").with_label("app", "web"));
        let mut e = PodLifecycleEvent::new(
            pod,
            EventType::ContainerDied,
            EventSource::Stream,
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        );
        e.container = Some(ContainerRef {
            id: "ctr-1".into(),
            name: "nginx".into(),
            attempt: 2,
            kind: EntryKind::Container,
        });
        e.exit_code = Some(137);
        e.reason = Some("OOMKilled".into());
        e.runtime_time = Some(UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789));
        e.started_at = Some(UNIX_EPOCH + Duration::from_secs(1_699_999_990));
        e.finished_at = e.runtime_time;
        e
    }

    #[test]
    fn an_event_survives_the_round_trip_through_protobuf() {
        let wire = |d: &Delivery| delivery_to_pb(d, true).expect("sent");
        let original = Delivery::Event(Arc::new(event().with_seq(41)));
        let back = delivery_from_pb(wire(&original)).expect("readable");
        assert_eq!(back, original);
        assert_eq!(back.seq(), Some(41));
        let initial = Delivery::Initial(Arc::new(event()));
        assert_eq!(wire(&initial).seq, 0, "initial state carries no seq");
        assert!(wire(&initial).initial);
        assert_eq!(delivery_from_pb(wire(&initial)), Ok(initial));
        for resync in [
            Delivery::lagged(7),
            Delivery::stream_gap(2, Some(42)),
            Delivery::resync(ResyncReason::EpochChanged, 0, None),
            Delivery::resync(ResyncReason::ReplayExpired, 9, None),
        ] {
            assert_eq!(delivery_from_pb(wire(&resync)), Ok(resync));
        }
        let synced = Delivery::Synced(ResumeToken::new(Epoch::named("00ff").expect("valid"), 43));
        assert_eq!(delivery_from_pb(wire(&synced)), Ok(synced.clone()));
        assert_eq!(
            delivery_to_pb(&synced, false),
            None,
            "no Synced for a watch that did not ask for an initial state"
        );
        let bad_epoch = pb::Event {
            item: Some(pb::event::Item::Synced(pb::Synced {
                epoch: "no spaces".into(),
                seq: 1,
            })),
            seq: 0,
            initial: false,
        };
        let err = delivery_from_pb(bad_epoch).expect_err("unreadable epoch");
        assert!(err.starts_with("synced.epoch:"), "{err}");
    }

    #[test]
    fn a_resume_point_needs_a_readable_epoch() {
        let request = pb::WatchRequest {
            epoch: "a/b".into(),
            since: 3,
            ..pb::WatchRequest::default()
        };
        let err = subscribe_options(&request, MAX_CAPACITY).expect_err("bad epoch");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("epoch: "), "{}", err.message());
        let request = pb::WatchRequest {
            epoch: "abc".into(),
            since: 3,
            initial_state: true,
            ..pb::WatchRequest::default()
        };
        let options = subscribe_options(&request, MAX_CAPACITY).expect("valid");
        assert_eq!(
            options.resume,
            Some(ResumeToken::new(Epoch::named("abc").expect("valid"), 3))
        );
        assert!(options.initial_state);
        let live = subscribe_options(
            &pb::WatchRequest {
                since: 3,
                ..pb::WatchRequest::default()
            },
            MAX_CAPACITY,
        )
        .expect("valid");
        assert_eq!(live.resume, None, "no epoch: live-only, since ignored");
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
        let health = Some(crate::phase::PodHealth::of(&status));
        let listing = PodListing {
            status,
            error: Some("runtime call PodStatus failed: boom".into()),
            last_events: vec![
                last("ctr-1", EventType::ContainerRemoved),
                last("ctr-2", EventType::ContainerDied),
                last("sb-1", EventType::ContainerStarted),
            ],
            health,
        };
        let wire = listing_to_pb(&listing, &listing.health());
        assert_eq!(wire.other_last_events.len(), 1, "ctr-1 is gone");
        assert_eq!(listing_from_pb(wire), Ok(listing));
    }

    #[test]
    fn watch_requests_are_checked_field_by_field() {
        let base = pb::WatchRequest::default();
        let options =
            subscribe_options(&base, MAX_CAPACITY).expect("the empty request takes everything");
        assert_eq!(options, SubscribeOptions::default());
        let bad_kind = pb::WatchRequest {
            kinds: vec![pb::EventType::ContainerDied.into(), 42],
            ..base.clone()
        };
        let err = subscribe_options(&bad_kind, MAX_CAPACITY).expect_err("unknown kind");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(err.message(), "kinds[1]: unknown event type 42");
        let unspecified = pb::WatchRequest {
            kinds: vec![0],
            ..base.clone()
        };
        let err = subscribe_options(&unspecified, MAX_CAPACITY).expect_err("unspecified kind");
        assert!(
            err.message().contains("EVENT_TYPE_UNSPECIFIED"),
            "{}",
            err.message()
        );
        let huge = pb::WatchRequest {
            capacity: 65_537,
            ..base.clone()
        };
        let err = subscribe_options(&huge, MAX_CAPACITY).expect_err("capacity");
        assert!(
            err.message().contains("capacity 65537"),
            "{}",
            err.message()
        );
        let changed = pb::WatchRequest {
            kinds: vec![pb::EventType::ContainerChanged.into()],
            ..base
        };
        assert!(subscribe_options(&changed, MAX_CAPACITY).is_err());
    }

    #[test]
    fn filters_past_the_size_limits_are_refused_naming_field_count_and_limit() {
        let refused = |request: pb::WatchRequest| {
            subscribe_options(&request, MAX_CAPACITY)
                .expect_err("refused")
                .message()
                .to_string()
        };
        let uids = pb::WatchRequest {
            pod_uids: (0..1025).map(|i| format!("uid-{i}")).collect(),
            ..Default::default()
        };
        assert_eq!(
            refused(uids),
            "pod_uids has 1025 entries; at most 1024 are allowed"
        );
        let labels = pb::WatchRequest {
            labels: (0..65)
                .map(|i| (format!("k{i}"), "v".to_string()))
                .collect(),
            ..Default::default()
        };
        assert_eq!(
            refused(labels),
            "labels has 65 entries; at most 64 are allowed"
        );
        let long_uid = pb::WatchRequest {
            pod_uids: vec!["a".into(), "u".repeat(129)],
            ..Default::default()
        };
        assert_eq!(
            refused(long_uid),
            "pod_uids[1] is 129 bytes long; at most 128 are allowed"
        );
        let long_value = pb::WatchRequest {
            labels: [("app".to_string(), "v".repeat(64))].into(),
            ..Default::default()
        };
        assert_eq!(
            refused(long_value),
            "labels[\"app\"] value is 64 bytes long; at most 63 are allowed"
        );
        let long_ns = pb::WatchRequest {
            namespace: "n".repeat(64),
            ..Default::default()
        };
        assert!(refused(long_ns).starts_with("namespace is 64 bytes long"));
        let at_limits = pb::WatchRequest {
            pod_uids: (0..1024).map(|i| format!("{i:0>128}")).collect(),
            labels: (0..64)
                .map(|i| (format!("{i:0>317}"), "v".repeat(63)))
                .collect(),
            namespace: "n".repeat(63),
            ..Default::default()
        };
        assert!(subscribe_options(&at_limits, MAX_CAPACITY).is_ok());
        let over_daemon_limit = pb::WatchRequest {
            capacity: 2000,
            ..Default::default()
        };
        let err = subscribe_options(&over_daemon_limit, 1000).expect_err("above 1000");
        assert_eq!(
            err.message(),
            "capacity 2000 is above the maximum of 1000 events (the daemon's --grpc-max-capacity)"
        );
    }

    #[test]
    fn a_library_filter_becomes_the_same_filter_on_the_daemon() {
        let filter = Filter {
            pod_uids: Some([PodUid::new("a"), PodUid::new("b")].into()),
            namespace: Some("shop".into()),
            labels: [("app".to_string(), "web".to_string())].into(),
            kinds: Some([EventType::ContainerDied, EventType::ContainerChanged].into()),
            selector: crate::select::PodSelector::labels("tier in (front,back),!canary")
                .and_then(|s| s.with_namespace_regex("sh.*"))
                .and_then(|s| s.with_name_regex("web-[0-9]+"))
                .expect("valid selector"),
            include_container_changed: true,
        };
        let request = watch_request(&filter, 5).expect("expressible");
        let options = subscribe_options(&request, MAX_CAPACITY).expect("valid");
        assert_eq!(options, SubscribeOptions::filtered(filter).with_capacity(5));
        let nothing = Filter {
            kinds: Some(std::collections::HashSet::default()),
            ..Filter::default()
        };
        assert!(watch_request(&nothing, 0).is_err());
    }
}
