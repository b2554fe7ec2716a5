//! The pure conversions from CRI messages into our model: states (a value
//! outside the enums becomes `Unknown` and is counted), times, IPs, pod
//! identity from sandbox metadata and labels, a listing grouped into pods,
//! statuses and events. Nothing here calls the runtime or panics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_cri::v1 as cri;

use crate::model::{Container, ContainerId, ContainerState, Listing, Pod, PodMeta, PodUid};
use crate::runtime::{ContainerEvent, ContainerEventKind, RuntimeStats, SandboxSnapshot};

use super::listed::{ListedContainer, ListedSandbox};

/// The kubelet's label carrying a container's pod UID.
const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";

/// Groups the runtime's sandboxes and containers into pods.
///
/// `known` holds the pod identities of the previous listing: a pod whose
/// sandbox metadata and labels are unchanged keeps its `Arc<PodMeta>`, so
/// the records, the cache and the events share one copy, and a relist
/// builds no identity for a pod that did not change.
pub(super) fn listing(
    stats: &RuntimeStats,
    known: &mut KnownMetas,
    sandboxes: impl IntoIterator<Item = impl Into<ListedSandbox>>,
    containers: impl IntoIterator<Item = impl Into<ListedContainer>>,
) -> Listing {
    let pods = pods(stats, known, sandboxes, containers);
    known.keep(pods.iter().map(|p| &p.meta));
    Listing::new(pods)
}

/// The pods of [`listing`], not yet in a listing's order (entries as
/// listed, pods in no particular order).
fn pods(
    stats: &RuntimeStats,
    known: &KnownMetas,
    sandboxes: impl IntoIterator<Item = impl Into<ListedSandbox>>,
    containers: impl IntoIterator<Item = impl Into<ListedContainer>>,
) -> Vec<Pod> {
    let sandboxes = sandboxes.into_iter().map(Into::<ListedSandbox>::into);
    let mut pods: HashMap<PodUid, Building> = HashMap::with_capacity(sandboxes.size_hint().0);
    let mut pod_of_sandbox: HashMap<String, PodUid> = HashMap::with_capacity(pods.capacity());
    // Sandboxes listed but skipped: their containers cannot be placed on a
    // later relist either, so they are skipped (and counted) too.
    let mut skipped_sandboxes: Vec<String> = Vec::new();
    for sandbox in sandboxes {
        if sandbox.id.is_empty() {
            stats.skip_record("pod sandbox", "empty ID");
            continue;
        }
        let Some(metadata) = sandbox.metadata else {
            stats.skip_record("pod sandbox", &format!("{} has no metadata", sandbox.id));
            skipped_sandboxes.push(sandbox.id);
            continue;
        };
        if metadata.uid.is_empty() {
            stats.skip_record("pod sandbox", &format!("{} has no pod UID", sandbox.id));
            skipped_sandboxes.push(sandbox.id);
            continue;
        }
        let uid = PodUid::new(&metadata.uid);
        let mut entry = Container::new(
            sandbox.id.as_str(),
            metadata.name.clone(),
            stats.decode_sandbox_state(sandbox.state),
        )
        .with_attempt(metadata.attempt);
        entry.created_at = time(sandbox.created_at);
        let meta = || known.get(&uid, &metadata, &sandbox.labels);
        match pods.get_mut(&uid) {
            Some(building) => {
                if sandbox.created_at > building.newest_sandbox {
                    building.newest_sandbox = sandbox.created_at;
                    building.pod.meta = meta();
                }
                building.pod.sandboxes.push(entry);
            }
            None => {
                pods.insert(
                    uid.clone(),
                    Building {
                        pod: Pod {
                            meta: meta(),
                            sandboxes: vec![entry],
                            containers: Vec::new(),
                        },
                        newest_sandbox: sandbox.created_at,
                    },
                );
            }
        }
        pod_of_sandbox.insert(sandbox.id, uid);
    }
    for c in containers.into_iter().map(Into::<ListedContainer>::into) {
        if c.id.is_empty() {
            stats.skip_record("container", "empty ID");
            continue;
        }
        let uid = match pod_of_sandbox.get(&c.pod_sandbox_id) {
            Some(uid) => uid.clone(),
            None => {
                if let Some(uid) = c.label(POD_UID_LABEL).filter(|u| !u.is_empty()) {
                    let uid = PodUid::new(uid);
                    pods.entry(uid.clone())
                        .or_insert_with(|| Building::from_labels(&uid, &c));
                    uid
                } else if skipped_sandboxes.contains(&c.pod_sandbox_id) {
                    stats.skip_record(
                        "container",
                        &format!(
                            "{}: its sandbox {} was skipped and it has no pod UID label",
                            c.id, c.pod_sandbox_id
                        ),
                    );
                    continue;
                } else {
                    // Usually a sandbox created between the two list
                    // calls; the next relist sees both.
                    tracing::debug!(
                        container = ?c.id, sandbox = ?c.pod_sandbox_id,
                        "container's sandbox is not listed; it waits for the next relist"
                    );
                    continue;
                }
            }
        };
        let entry = container_entry(stats, c);
        if let Some(building) = pods.get_mut(&uid) {
            building.pod.containers.push(entry);
        }
    }
    pods.into_values().map(|b| b.pod).collect()
}

/// A pod of a listing being built.
struct Building {
    pod: Pod,
    /// The creation time of its newest sandbox, whose metadata it has.
    newest_sandbox: i64,
}

impl Building {
    /// The pod of a container whose sandbox is not listed, from the
    /// kubelet's labels on the container.
    fn from_labels(uid: &PodUid, c: &ListedContainer) -> Self {
        let label = |key: &str| c.label(key).cloned().unwrap_or_default();
        Building {
            pod: Pod::new(PodMeta::new(
                uid.as_str(),
                label(POD_NAME_LABEL),
                label(POD_NAMESPACE_LABEL),
            )),
            newest_sandbox: i64::MIN,
        }
    }
}

/// The pod identities of the last listing, by UID (see [`listing`]).
#[derive(Debug, Default)]
pub(crate) struct KnownMetas(HashMap<PodUid, Arc<PodMeta>>);

impl KnownMetas {
    /// The identity of a pod, the known one when nothing in it changed.
    fn get(
        &self,
        uid: &PodUid,
        metadata: &cri::PodSandboxMetadata,
        labels: &HashMap<String, String>,
    ) -> Arc<PodMeta> {
        match self.0.get(uid) {
            Some(known)
                if known.name == metadata.name
                    && known.namespace == metadata.namespace
                    && known.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| known.labels.get(k).is_some_and(|kv| kv == v)) =>
            {
                known.clone()
            }
            _ => Arc::new(pod_meta(metadata, labels)),
        }
    }

    /// Keeps the identities of this listing's pods (and forgets the others).
    fn keep<'a>(&mut self, metas: impl Iterator<Item = &'a Arc<PodMeta>>) {
        let mut kept = HashMap::with_capacity(self.0.len().max(metas.size_hint().0));
        for meta in metas {
            kept.insert(meta.uid.clone(), meta.clone());
        }
        self.0 = kept;
    }
}

/// A listed container in our model.
fn container_entry(stats: &RuntimeStats, c: ListedContainer) -> Container {
    let mut c = c;
    let (name, attempt) = match c.metadata.take() {
        Some(m) => (m.name, m.attempt),
        None => (c.take_label(CONTAINER_NAME_LABEL).unwrap_or_default(), 0),
    };
    let mut entry = Container::new(
        std::mem::take(&mut c.id),
        name,
        stats.decode_container_state(c.state),
    )
    .with_attempt(attempt);
    entry.created_at = time(c.created_at);
    entry.image = if c.image.is_empty() {
        c.image_ref
    } else {
        c.image
    };
    entry
}

/// A CRI container status in our model, as the cache would hold it;
/// `listed` (the container as listed) fills what the status lacks. Unknown
/// state values become `Unknown` and are counted in `stats`.
pub fn container_from_status(
    stats: &RuntimeStats,
    s: &cri::ContainerStatus,
    listed: &Container,
) -> Container {
    let (name, attempt) = s.metadata.as_ref().map_or_else(
        || (listed.name.clone(), listed.attempt),
        |m| (m.name.clone(), m.attempt),
    );
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
        entry.image.clone_from(&listed.image);
    }
    entry
}

/// A sandbox status in our model; `listed` (the sandbox as listed) fills
/// what the status lacks.
pub(super) fn sandbox_from_status(
    stats: &RuntimeStats,
    s: &cri::PodSandboxStatus,
    listed: &Container,
) -> Container {
    let state = stats.decode_sandbox_state(s.state);
    let (name, attempt) = s.metadata.as_ref().map_or_else(
        || (listed.name.clone(), listed.attempt),
        |m| (m.name.clone(), m.attempt),
    );
    let id = if s.id.is_empty() {
        listed.id.as_str()
    } else {
        s.id.as_str()
    };
    let mut entry = Container::new(id, name, state).with_attempt(attempt);
    entry.created_at = time(s.created_at).or(listed.created_at);
    entry
}

/// Converts one CRI event; `None` (counted) for an event type we do not know
/// or an event without a container ID.
pub(super) fn event_from_cri(
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
pub(super) fn sandbox_ips(network: &cri::PodSandboxNetworkStatus) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000_000;

    fn at(seconds: i64) -> Option<SystemTime> {
        time(seconds * SECOND)
    }

    fn sandbox(id: &str, uid: &str, name: &str, state: i32, created: i64) -> cri::PodSandbox {
        cri::PodSandbox {
            id: id.into(),
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: "default".into(),
                attempt: 1,
            }),
            state,
            created_at: created * SECOND,
            labels: HashMap::from([("app".to_string(), name.to_string())]),
            ..cri::PodSandbox::default()
        }
    }

    fn container(id: &str, sandbox_id: &str, name: &str, state: i32) -> cri::Container {
        cri::Container {
            id: id.into(),
            pod_sandbox_id: sandbox_id.into(),
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 2,
            }),
            image: Some(cri::ImageSpec {
                image: "busybox".into(),
                ..cri::ImageSpec::default()
            }),
            image_ref: "sha256:abc".into(),
            state,
            created_at: 10 * SECOND,
            ..cri::Container::default()
        }
    }

    fn pod<'a>(listing: &'a Listing, uid: &str) -> &'a Pod {
        listing.get(&PodUid::new(uid)).expect("the pod is listed")
    }

    #[test]
    fn timestamps_of_zero_or_below_are_unset() {
        assert_eq!(time(0), None);
        assert_eq!(time(-5), None);
        assert_eq!(time(1_500), Some(UNIX_EPOCH + Duration::from_nanos(1_500)));
    }

    #[test]
    fn container_and_sandbox_states_decode_and_unknown_values_are_counted() {
        use ContainerState::*;
        let stats = RuntimeStats::default();
        let states: Vec<ContainerState> = (0..4)
            .map(|raw| container_entry(&stats, container("c", "s", "app", raw).into()).state)
            .collect();
        assert_eq!(states, [Created, Running, Exited, Unknown]);
        assert_eq!(stats.unknown_values(), 0);
        assert_eq!(
            container_entry(&stats, container("c", "s", "app", 7).into()).state,
            Unknown
        );
        assert_eq!(stats.unknown_values(), 1);

        let listed = Container::new("s", "web", Unknown);
        let sandbox_state = |raw| {
            let status = cri::PodSandboxStatus {
                state: raw,
                ..cri::PodSandboxStatus::default()
            };
            sandbox_from_status(&stats, &status, &listed).state
        };
        assert_eq!([sandbox_state(0), sandbox_state(1)], [Running, Exited]);
        assert_eq!(sandbox_state(-1), Unknown);
        assert_eq!(stats.unknown_values(), 2);
    }

    #[test]
    fn a_container_status_gives_times_exit_code_and_reason_and_the_listing_fills_the_gaps() {
        let stats = RuntimeStats::default();
        let listed = Container::new("c1", "app", ContainerState::Running).with_attempt(3);
        let exited = cri::ContainerStatus {
            id: "c1".into(),
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 4,
            }),
            state: cri::ContainerState::ContainerExited as i32,
            created_at: 10 * SECOND,
            started_at: 11 * SECOND,
            finished_at: 12 * SECOND,
            exit_code: 3,
            reason: "Error".into(),
            image_ref: "sha256:abc".into(),
            ..cri::ContainerStatus::default()
        };
        let c = container_from_status(&stats, &exited, &listed);
        assert_eq!(
            (c.id.as_str(), c.name.as_str(), c.attempt),
            ("c1", "app", 4)
        );
        assert_eq!(c.state, ContainerState::Exited);
        assert_eq!(
            (c.created_at, c.started_at, c.finished_at),
            (at(10), at(11), at(12))
        );
        assert_eq!((c.exit_code, c.reason.as_deref()), (Some(3), Some("Error")));
        assert_eq!(
            c.image, "sha256:abc",
            "the image reference stands in for a missing spec"
        );

        // A running container has no exit code; an empty reason is none; what
        // the status lacks comes from the listing.
        let running = cri::ContainerStatus {
            state: cri::ContainerState::ContainerRunning as i32,
            exit_code: 0,
            ..cri::ContainerStatus::default()
        };
        let listed = Container {
            created_at: at(5),
            image: "busybox".into(),
            ..listed
        };
        let c = container_from_status(&stats, &running, &listed);
        assert_eq!(
            (c.id.as_str(), c.name.as_str(), c.attempt),
            ("c1", "app", 3)
        );
        assert_eq!((c.exit_code, c.reason), (None, None));
        assert_eq!((c.created_at, c.started_at), (at(5), None));
        assert_eq!(c.image, "busybox");
    }

    #[test]
    fn sandbox_ips_come_primary_first_without_empty_ones() {
        let network = cri::PodSandboxNetworkStatus {
            ip: "10.88.0.2".into(),
            additional_ips: vec![
                cri::PodIp { ip: String::new() },
                cri::PodIp {
                    ip: "fd00::2".into(),
                },
            ],
        };
        assert_eq!(sandbox_ips(&network), ["10.88.0.2", "fd00::2"]);
        let host_network = cri::PodSandboxNetworkStatus::default();
        assert!(sandbox_ips(&host_network).is_empty());
    }

    #[test]
    fn a_pod_takes_its_identity_from_its_newest_sandbox_and_its_labels() {
        let stats = RuntimeStats::default();
        let mut old = sandbox("s-old", "uid-1", "web", 1, 100);
        old.labels = HashMap::from([("app".to_string(), "old".to_string())]);
        let mut new = sandbox("s-new", "uid-1", "web", 0, 200);
        new.labels = HashMap::from([("app".to_string(), "new".to_string())]);
        let listing = listing(
            &stats,
            &mut KnownMetas::default(),
            vec![new, old],
            Vec::<cri::Container>::new(),
        );
        let web = pod(&listing, "uid-1");
        assert_eq!(web.meta.name, "web");
        assert_eq!(web.meta.namespace, "default");
        assert_eq!(web.meta.labels.get("app").map(String::as_str), Some("new"));
        let ids: Vec<&str> = web.sandboxes.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["s-new", "s-old"]);
        let newest = web.sandboxes.iter().find(|s| s.id.as_str() == "s-new");
        assert_eq!(
            newest.map(|s| (s.name.as_str(), s.attempt, s.state, s.created_at)),
            Some(("web", 1, ContainerState::Running, at(200)))
        );
    }

    #[test]
    fn a_listing_groups_containers_by_sandbox_and_leaves_out_what_it_cannot_place() {
        let stats = RuntimeStats::default();
        let sandboxes = vec![
            sandbox("s1", "uid-1", "web", 0, 100),
            sandbox("s2", "uid-2", "db", 0, 100),
            sandbox("", "uid-3", "no-id", 0, 100),
            cri::PodSandbox {
                id: "s4".into(),
                metadata: None,
                ..cri::PodSandbox::default()
            },
            sandbox("s5", "", "no-uid", 0, 100),
        ];
        let mut by_label = container("c4", "s-unlisted", "late", 1);
        by_label.labels = HashMap::from([
            (POD_UID_LABEL.to_string(), "uid-9".to_string()),
            (POD_NAME_LABEL.to_string(), "late-pod".to_string()),
            (POD_NAMESPACE_LABEL.to_string(), "jobs".to_string()),
        ]);
        let containers = vec![
            container("c1", "s1", "nginx", 1),
            container("c2", "s2", "pg", 2),
            container("", "s1", "no-id", 1),
            container("c3", "s-unlisted", "orphan", 1),
            container("c5", "s4", "in-a-skipped-sandbox", 1),
            by_label,
        ];
        let listing = listing(&stats, &mut KnownMetas::default(), sandboxes, containers);
        assert_eq!(listing.len(), 3, "uid-1, uid-2 and uid-9 (from the labels)");
        assert_eq!(
            stats.skipped_records(),
            5,
            "three sandboxes, a container without an ID and one whose sandbox was skipped"
        );

        let web = pod(&listing, "uid-1");
        let names: Vec<&str> = web.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["nginx"]);
        let nginx = &web.containers[0];
        assert_eq!(
            (
                nginx.attempt,
                nginx.state,
                nginx.created_at,
                nginx.image.as_str()
            ),
            (2, ContainerState::Running, at(10), "busybox")
        );
        assert_eq!(
            pod(&listing, "uid-2").containers[0].state,
            ContainerState::Exited
        );

        // A container whose sandbox is not listed yet belongs to the pod its
        // labels name; without them it waits for the next relist.
        let late = pod(&listing, "uid-9");
        assert_eq!(
            (late.meta.name.as_str(), late.meta.namespace.as_str()),
            ("late-pod", "jobs")
        );
        assert!(late.sandboxes.is_empty());
        assert_eq!(late.containers[0].id.as_str(), "c4");
        assert!(
            listing
                .pods()
                .iter()
                .all(|p| p.containers.iter().all(|c| c.id.as_str() != "c3"))
        );
    }

    #[test]
    fn a_container_without_metadata_is_named_by_its_label() {
        let stats = RuntimeStats::default();
        let mut c = container("c1", "s1", "ignored", 1);
        c.metadata = None;
        c.labels = HashMap::from([(CONTAINER_NAME_LABEL.to_string(), "app".to_string())]);
        let entry = container_entry(&stats, c.into());
        assert_eq!((entry.name.as_str(), entry.attempt), ("app", 0));
    }

    #[test]
    fn events_convert_with_their_sandbox_and_container_statuses() {
        let stats = RuntimeStats::default();
        let event = cri::ContainerEventResponse {
            container_id: "c1".into(),
            container_event_type: cri::ContainerEventType::ContainerStoppedEvent as i32,
            created_at: 20 * SECOND,
            pod_sandbox_status: Some(cri::PodSandboxStatus {
                id: "s1".into(),
                metadata: Some(cri::PodSandboxMetadata {
                    name: "web".into(),
                    uid: "uid-1".into(),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                state: cri::PodSandboxState::SandboxReady as i32,
                created_at: 5 * SECOND,
                network: Some(cri::PodSandboxNetworkStatus {
                    ip: "10.88.0.7".into(),
                    additional_ips: vec![],
                }),
                labels: HashMap::from([("app".to_string(), "web".to_string())]),
                ..cri::PodSandboxStatus::default()
            }),
            containers_statuses: vec![
                cri::ContainerStatus {
                    id: "c1".into(),
                    metadata: Some(cri::ContainerMetadata {
                        name: "app".into(),
                        attempt: 0,
                    }),
                    state: cri::ContainerState::ContainerExited as i32,
                    exit_code: 137,
                    reason: "Error".into(),
                    ..cri::ContainerStatus::default()
                },
                cri::ContainerStatus::default(),
            ],
        };
        let converted = event_from_cri(&stats, event).expect("a known event");
        assert_eq!(converted.id.as_str(), "c1");
        assert_eq!(converted.kind, ContainerEventKind::Stopped);
        assert_eq!(converted.created_at, at(20));
        let snapshot = converted.sandbox.expect("the sandbox");
        let meta = snapshot.pod.expect("the pod's identity");
        assert_eq!((meta.uid.as_str(), meta.name.as_str()), ("uid-1", "web"));
        assert_eq!(meta.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(snapshot.sandbox.id.as_str(), "s1");
        assert_eq!(snapshot.sandbox.state, ContainerState::Running);
        assert_eq!(snapshot.sandbox.created_at, at(5));
        assert_eq!(snapshot.ips, ["10.88.0.7"]);
        assert_eq!(
            converted.containers.len(),
            1,
            "a status without an ID is left out"
        );
        let app = &converted.containers[0];
        assert_eq!(
            (app.state, app.exit_code),
            (ContainerState::Exited, Some(137))
        );
    }

    #[test]
    fn an_event_of_an_unknown_type_or_without_an_id_is_skipped_and_counted() {
        let stats = RuntimeStats::default();
        let unknown = cri::ContainerEventResponse {
            container_id: "c1".into(),
            container_event_type: 9,
            ..cri::ContainerEventResponse::default()
        };
        assert!(event_from_cri(&stats, unknown).is_none());
        let anonymous = cri::ContainerEventResponse::default();
        assert!(event_from_cri(&stats, anonymous).is_none());
        assert_eq!(stats.skipped_records(), 2);

        // A sandbox's DELETED event (containerd 1.7) carries no metadata: no
        // pod identity, the sandbox still named by its ID.
        let deleted = cri::ContainerEventResponse {
            container_id: "s1".into(),
            container_event_type: cri::ContainerEventType::ContainerDeletedEvent as i32,
            pod_sandbox_status: Some(cri::PodSandboxStatus {
                id: "s1".into(),
                ..cri::PodSandboxStatus::default()
            }),
            ..cri::ContainerEventResponse::default()
        };
        let converted = event_from_cri(&stats, deleted).expect("a known event");
        assert_eq!(converted.kind, ContainerEventKind::Deleted);
        let snapshot = converted.sandbox.expect("the sandbox");
        assert!(snapshot.pod.is_none());
        assert_eq!(snapshot.sandbox.id.as_str(), "s1");
        assert_eq!(converted.created_at, None);
    }
}

mod unchanged;
pub(crate) use unchanged::{ListedBytes, listing_from_answers};

#[cfg(test)]
mod proptests;
