//! Bad input from the runtime, generated: arbitrary CRI sandboxes,
//! containers, statuses and events (IDs empty, repeated, 1 MiB long or full
//! of control characters; enum values anywhere in `i32`; timestamps anywhere
//! in `i64`; metadata missing). The conversions never panic, and every
//! record either converts or is accounted for: skipped and counted (also a
//! container whose sandbox was skipped), left for the next relist (a
//! container whose sandbox is not listed yet), or folded into an entry with
//! the same ID.
//!
//! These stand in for fuzzing: cargo-fuzz needs a nightly toolchain, which
//! the project does not use. 256 cases per property by default;
//! `PROPTEST_CASES` raises it (CI runs 4096).

use std::collections::{HashMap, HashSet};

use proptest::collection::{hash_map, vec};
use proptest::prelude::*;

use super::*;

/// A few IDs that repeat, the empty one, arbitrary unicode (control
/// characters included) and, rarely, a 1 MiB one.
fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        100 => text(),
        1 => Just("\u{1f600}".repeat(1 << 18)),
    ]
}

/// Like [`id`], without the 1 MiB one (names, labels, references).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[abc][0-2]",
        1 => Just(String::new()),
        2 => any::<String>(),
        1 => "[\\x00-\\x1f\\u{7f}\\u{202e}\\u{feff}]{1,4}",
    ]
}

/// Mostly the enum's values, and anything else.
fn enum_value() -> impl Strategy<Value = i32> {
    prop_oneof![3 => -1..5i32, 1 => any::<i32>(), 1 => Just(i32::MIN), 1 => Just(i32::MAX)]
}

/// Negative, zero, small, huge.
fn timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(i64::MAX),
        Just(i64::MIN),
        -3..3i64,
        any::<i64>(),
    ]
}

fn labels() -> impl Strategy<Value = HashMap<String, String>> {
    let key = prop_oneof![
        Just(POD_UID_LABEL.to_string()),
        Just(POD_NAME_LABEL.to_string()),
        Just(POD_NAMESPACE_LABEL.to_string()),
        Just(CONTAINER_NAME_LABEL.to_string()),
        any::<String>(),
    ];
    hash_map(key, text(), 0..4)
}

fn sandbox_metadata() -> impl Strategy<Value = Option<cri::PodSandboxMetadata>> {
    proptest::option::weighted(
        0.8,
        (text(), id(), text(), any::<u32>()).prop_map(|(name, uid, namespace, attempt)| {
            cri::PodSandboxMetadata {
                name,
                uid,
                namespace,
                attempt,
            }
        }),
    )
}

fn container_metadata() -> impl Strategy<Value = Option<cri::ContainerMetadata>> {
    proptest::option::weighted(
        0.8,
        (text(), any::<u32>()).prop_map(|(name, attempt)| cri::ContainerMetadata { name, attempt }),
    )
}

fn image() -> impl Strategy<Value = Option<cri::ImageSpec>> {
    proptest::option::of(text().prop_map(|image| cri::ImageSpec {
        image,
        ..cri::ImageSpec::default()
    }))
}

prop_compose! {
    fn sandbox()(
        id in id(),
        metadata in sandbox_metadata(),
        state in enum_value(),
        created_at in timestamp(),
        labels in labels(),
    ) -> cri::PodSandbox {
        cri::PodSandbox { id, metadata, state, created_at, labels, ..cri::PodSandbox::default() }
    }
}

prop_compose! {
    fn container()(
        id in id(),
        pod_sandbox_id in id(),
        metadata in container_metadata(),
        image in image(),
        image_ref in text(),
        state in enum_value(),
        created_at in timestamp(),
        labels in labels(),
    ) -> cri::Container {
        cri::Container {
            id, pod_sandbox_id, metadata, image, image_ref, state, created_at, labels,
            ..cri::Container::default()
        }
    }
}

prop_compose! {
    fn container_status()(
        id in id(),
        metadata in container_metadata(),
        state in enum_value(),
        times in (timestamp(), timestamp(), timestamp()),
        exit_code in any::<i32>(),
        reason in prop_oneof![Just(String::new()), text()],
        image in image(),
        image_ref in text(),
    ) -> cri::ContainerStatus {
        cri::ContainerStatus {
            id, metadata, state,
            created_at: times.0, started_at: times.1, finished_at: times.2,
            exit_code, reason, image, image_ref,
            ..cri::ContainerStatus::default()
        }
    }
}

prop_compose! {
    fn sandbox_status()(
        id in id(),
        metadata in sandbox_metadata(),
        state in enum_value(),
        created_at in timestamp(),
        labels in labels(),
        ips in proptest::option::of((text(), vec(text(), 0..3))),
    ) -> cri::PodSandboxStatus {
        cri::PodSandboxStatus {
            id, metadata, state, created_at, labels,
            network: ips.map(|(ip, more)| cri::PodSandboxNetworkStatus {
                ip,
                additional_ips: more.into_iter().map(|ip| cri::PodIp { ip }).collect(),
            }),
            ..cri::PodSandboxStatus::default()
        }
    }
}

prop_compose! {
    fn event()(
        container_id in id(),
        container_event_type in enum_value(),
        created_at in timestamp(),
        pod_sandbox_status in proptest::option::of(sandbox_status()),
        containers_statuses in vec(container_status(), 0..4),
    ) -> cri::ContainerEventResponse {
        cri::ContainerEventResponse {
            container_id, container_event_type, created_at, pod_sandbox_status, containers_statuses,
        }
    }
}

fn usable_sandbox(s: &cri::PodSandbox) -> bool {
    !s.id.is_empty() && s.metadata.as_ref().is_some_and(|m| !m.uid.is_empty())
}

fn known_container_state(raw: i32) -> bool {
    (0..=3).contains(&raw)
}

fn known_sandbox_state(raw: i32) -> bool {
    (0..=1).contains(&raw)
}

proptest! {
    #![proptest_config(ProptestConfig::default())]
    /// The slim listing messages decode the bytes of the full CRI messages
    /// (annotations and all) into the same listing as the full messages
    /// give, and count the same skipped records and unknown values.
    #[test]
    fn the_slim_listing_messages_give_the_listing_of_the_full_ones(
        sandboxes in vec(sandbox(), 0..6),
        containers in vec(container(), 0..6),
        annotations in labels(),
    ) {
        use prost::Message;
        use super::super::listed::{ListedContainer, ListedSandbox};
        let full_stats = RuntimeStats::default();
        let full = listing(&full_stats, &mut KnownMetas::default(), sandboxes.clone(), containers.clone());
        let wire_stats = RuntimeStats::default();
        let slim_sandboxes = sandboxes.into_iter().map(|mut s| {
            s.annotations.clone_from(&annotations);
            ListedSandbox::decode(s.encode_to_vec().as_slice())
        }).collect::<Result<Vec<_>, _>>();
        let slim_containers = containers.into_iter().map(|mut c| {
            c.annotations.clone_from(&annotations);
            c.image_id = "sha256:ignored".into();
            ListedContainer::decode(c.encode_to_vec().as_slice())
        }).collect::<Result<Vec<_>, _>>();
        prop_assert!(slim_sandboxes.is_ok() && slim_containers.is_ok(), "the same wire format");
        let slim = listing(
            &wire_stats,
            &mut KnownMetas::default(),
            slim_sandboxes.unwrap_or_default(),
            slim_containers.unwrap_or_default(),
        );
        prop_assert_eq!(full.pods(), slim.pods());
        prop_assert_eq!(full_stats.skipped_records(), wire_stats.skipped_records());
        prop_assert_eq!(full_stats.unknown_values(), wire_stats.unknown_values());
    }

    /// The listing read from the answers' bytes, relist after relist (the
    /// same answers, then one container changed and more listed), is the
    /// listing of their decoded messages, with the same counts of skipped
    /// records, unknown values and folded duplicates.
    #[test]
    fn the_listing_of_the_answers_bytes_is_the_listing_of_their_messages(
        sandboxes in vec(sandbox(), 0..6),
        containers in vec(container(), 0..6),
        more in vec(container(), 0..3),
        changed in any::<proptest::sample::Index>(),
        state in enum_value(),
        regular in any::<bool>(),
    ) {
        use prost::Message;
        // Half the cases made regular (distinct IDs, every container in a
        // listed sandbox), which the wire reader keeps pods of.
        let (sandboxes, containers, more) = if regular {
            regularised(sandboxes, containers, more)
        } else {
            (sandboxes, containers, more)
        };
        let mut next = containers.clone();
        if !next.is_empty() {
            let at = changed.index(next.len());
            next[at].state = state;
        }
        next.extend(more);
        let relists = [
            (sandboxes.clone(), containers.clone()),
            (sandboxes.clone(), containers),
            (sandboxes, next),
        ];
        let mut plain_known = KnownMetas::default();
        let mut wire_known = KnownMetas::default();
        let mut kept = ListedBytes::default();
        let mut previous = Listing::default();
        for (relist, (sandboxes, containers)) in relists.into_iter().enumerate() {
            let plain_stats = RuntimeStats::default();
            let plain = listing(&plain_stats, &mut plain_known, sandboxes.clone(), containers.clone());
            let wire_stats = RuntimeStats::default();
            let wire = listing_from_answers(
                &wire_stats,
                &mut wire_known,
                &mut kept,
                &cri::ListPodSandboxResponse { items: sandboxes }.encode_to_vec(),
                &cri::ListContainersResponse { containers }.encode_to_vec(),
            );
            prop_assert!(wire.is_ok(), "the answers decode");
            let wire = wire.unwrap_or_default();
            prop_assert_eq!(plain.pods(), wire.pods());
            prop_assert_eq!(plain.duplicates_dropped(), wire.duplicates_dropped());
            prop_assert_eq!(plain_stats.skipped_records(), wire_stats.skipped_records());
            prop_assert_eq!(plain_stats.unknown_values(), wire_stats.unknown_values());
            if regular && relist == 1 {
                // Listed again in the same bytes: kept whole, unless it
                // holds an unknown state (counted at every relist); and
                // the listing itself, when every pod is.
                let all_kept = wire.pods().iter().all(|pod| {
                    pod.sandboxes.iter().chain(&pod.containers)
                        .all(|c| c.state != ContainerState::Unknown)
                });
                prop_assert_eq!(wire.is_same(&previous), all_kept);
                for pod in wire.pods() {
                    let known = pod.sandboxes.iter().chain(&pod.containers)
                        .all(|c| c.state != ContainerState::Unknown);
                    let same = previous.get(&pod.meta.uid).is_some_and(|p| Arc::ptr_eq(p, pod));
                    prop_assert_eq!(known, same, "pod {:?}", pod.meta.uid);
                }
            }
            previous = wire;
        }
    }

    /// A pod listed again with the same sandbox metadata and labels keeps
    /// its identity (the same `Arc`); one whose labels changed gets a new
    /// one, equal to what a first listing gives.
    #[test]
    fn a_pod_listed_again_unchanged_keeps_its_identity(
        sandboxes in vec(sandbox(), 0..6),
        relabelled in any::<proptest::sample::Index>(),
    ) {
        let stats = RuntimeStats::default();
        let mut known = KnownMetas::default();
        let first = listing(&stats, &mut known, sandboxes.clone(), Vec::<cri::Container>::new());
        let again = listing(&stats, &mut known, sandboxes.clone(), Vec::<cri::Container>::new());
        prop_assert_eq!(first.pods(), again.pods());
        for (a, b) in first.pods().iter().zip(again.pods()) {
            prop_assert!(Arc::ptr_eq(&a.meta, &b.meta), "pod {:?} got a new identity", a.meta.uid);
        }
        if sandboxes.is_empty() {
            return Ok(());
        }
        let mut changed = sandboxes;
        let at = relabelled.index(changed.len());
        changed[at].labels.insert("pleg.test/relabelled".into(), "yes".into());
        let fresh = listing(&stats, &mut KnownMetas::default(), changed.clone(), Vec::<cri::Container>::new());
        let relisted = listing(&stats, &mut known, changed, Vec::<cri::Container>::new());
        prop_assert_eq!(fresh.pods(), relisted.pods());
    }


    /// Every sandbox and container of a listing is placed in a pod, skipped
    /// and counted, left for the next relist, or folded into an entry with
    /// the same ID; unknown states are counted once each.
    #[test]
    fn every_listed_record_is_converted_or_accounted_for(
        sandboxes in vec(sandbox(), 0..8),
        containers in vec(container(), 0..8),
    ) {
        let stats = RuntimeStats::default();
        let usable: Vec<&cri::PodSandbox> = sandboxes.iter().filter(|s| usable_sandbox(s)).collect();
        let usable_ids: HashSet<&str> = usable.iter().map(|s| s.id.as_str()).collect();
        let placed: Vec<&cri::Container> = containers
            .iter()
            .filter(|c| !c.id.is_empty())
            .filter(|c| {
                usable_ids.contains(c.pod_sandbox_id.as_str())
                    || c.labels.get(POD_UID_LABEL).is_some_and(|u| !u.is_empty())
            })
            .collect();
        // A container whose sandbox was listed but skipped is skipped too;
        // one whose sandbox is not listed at all waits for the next relist.
        let skipped_ids: HashSet<&str> = sandboxes
            .iter()
            .filter(|s| !s.id.is_empty() && !usable_sandbox(s))
            .map(|s| s.id.as_str())
            .collect();
        let orphans = containers
            .iter()
            .filter(|c| !c.id.is_empty() && !placed.iter().any(|p| std::ptr::eq(*p, *c)))
            .filter(|c| skipped_ids.contains(c.pod_sandbox_id.as_str()))
            .count();
        let skipped = (sandboxes.len() - usable.len())
            + containers.iter().filter(|c| c.id.is_empty()).count()
            + orphans;
        let unknown = usable.iter().filter(|s| !known_sandbox_state(s.state)).count()
            + placed.iter().filter(|c| !known_container_state(c.state)).count();

        let listing = listing(&stats, &mut KnownMetas::default(), sandboxes.clone(), containers.clone());

        prop_assert_eq!(stats.skipped_records(), skipped as u64);
        prop_assert_eq!(stats.unknown_values(), unknown as u64);
        let listed: usize = listing
            .pods()
            .iter()
            .map(|p| p.sandboxes.len() + p.containers.len())
            .sum();
        prop_assert_eq!(listed + listing.duplicates_dropped(), usable.len() + placed.len());
        for pod in listing.pods() {
            prop_assert!(!pod.meta.uid.is_empty(), "a pod without a UID");
            for s in &pod.sandboxes {
                // Each listed sandbox is one of the usable ones, of this pod.
                let source = usable.iter().find(|u| {
                    u.id == s.id.as_str()
                        && u.metadata.as_ref().is_some_and(|m| m.uid == pod.meta.uid.as_str())
                });
                prop_assert!(source.is_some(), "sandbox {:?} came from nowhere", s.id);
            }
            for c in &pod.containers {
                prop_assert!(placed.iter().any(|p| p.id == c.id.as_str()));
            }
        }
    }

    /// A listing's pod order does not depend on the order the runtime
    /// listed the pods in.
    #[test]
    fn a_listing_does_not_depend_on_the_runtimes_order(
        sandboxes in vec(sandbox(), 0..6),
        containers in vec(container(), 0..6),
    ) {
        let stats = RuntimeStats::default();
        let forward = listing(&stats, &mut KnownMetas::default(), sandboxes.clone(), containers.clone());
        let mut rev_sandboxes = sandboxes;
        rev_sandboxes.reverse();
        let backward = listing(&stats, &mut KnownMetas::default(), rev_sandboxes, containers);
        let uids = |l: &Listing| l.pods().iter().map(|p| p.meta.uid.clone()).collect::<Vec<_>>();
        prop_assert_eq!(uids(&forward), uids(&backward));
    }

    /// CRI timestamps: positive nanoseconds are a time that converts back
    /// exactly; zero and below are unset.
    #[test]
    fn timestamps_round_trip_or_are_unset(nanos in timestamp()) {
        match time(nanos) {
            None => prop_assert!(nanos <= 0),
            Some(t) => {
                let back = t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos());
                prop_assert_eq!(back.ok(), u128::try_from(nanos).ok());
            }
        }
    }

    /// A state the CRI enum knows maps to the state of the same name (its
    /// own UNKNOWN to unknown, uncounted); anything else maps to unknown and
    /// is counted once.
    #[test]
    fn states_map_by_name_and_unknown_values_map_to_unknown(raw in any::<i32>()) {
        let stats = RuntimeStats::default();
        let container = stats.decode_container_state(raw);
        let expected = match cri::ContainerState::try_from(raw) {
            Ok(cri::ContainerState::ContainerCreated) => Some(ContainerState::Created),
            Ok(cri::ContainerState::ContainerRunning) => Some(ContainerState::Running),
            Ok(cri::ContainerState::ContainerExited) => Some(ContainerState::Exited),
            Ok(cri::ContainerState::ContainerUnknown) => Some(ContainerState::Unknown),
            Err(_) => None,
        };
        prop_assert_eq!(container, expected.unwrap_or(ContainerState::Unknown));
        prop_assert_eq!(stats.unknown_values(), u64::from(expected.is_none()));

        let stats = RuntimeStats::default();
        let sandbox = stats.decode_sandbox_state(raw);
        let expected = match cri::PodSandboxState::try_from(raw) {
            Ok(cri::PodSandboxState::SandboxReady) => Some(ContainerState::Running),
            Ok(cri::PodSandboxState::SandboxNotready) => Some(ContainerState::Exited),
            Err(_) => None,
        };
        prop_assert_eq!(sandbox, expected.unwrap_or(ContainerState::Unknown));
        prop_assert_eq!(stats.unknown_values(), u64::from(expected.is_none()));
    }

    /// A container status converts whatever it holds: its ID (or the
    /// listing's), an exit code exactly when it exited, no empty reason,
    /// times as `time` reads them, the listing's creation time and image
    /// where the status has none.
    #[test]
    fn a_container_status_always_converts(
        status in container_status(),
        listed_id in id(),
        listed_created in timestamp(),
        listed_image in text(),
    ) {
        let stats = RuntimeStats::default();
        let mut listed = Container::new(listed_id.as_str(), "listed", ContainerState::Running);
        listed.created_at = time(listed_created);
        listed.image.clone_from(&listed_image);
        let c = container_from_status(&stats, &status, &listed);
        let want_id = if status.id.is_empty() { &listed_id } else { &status.id };
        prop_assert_eq!(c.id.as_str(), want_id.as_str());
        prop_assert_eq!(c.state, stats_free_container_state(status.state));
        prop_assert_eq!(c.exit_code.is_some(), c.state == ContainerState::Exited);
        prop_assert!(c.reason.as_deref() != Some(""));
        prop_assert_eq!(c.created_at, time(status.created_at).or(listed.created_at));
        prop_assert_eq!(c.started_at, time(status.started_at));
        prop_assert_eq!(c.finished_at, time(status.finished_at));
        let from_status = image_name(status.image.as_ref(), &status.image_ref);
        let want_image = if from_status.is_empty() { listed_image } else { from_status };
        prop_assert_eq!(&c.image, &want_image);
        prop_assert_eq!(stats.unknown_values(), u64::from(!known_container_state(status.state)));
    }

    /// A sandbox status converts whatever it holds.
    #[test]
    fn a_sandbox_status_always_converts(status in sandbox_status(), listed_id in id()) {
        let stats = RuntimeStats::default();
        let listed = Container::new(listed_id.as_str(), "listed", ContainerState::Unknown);
        let s = sandbox_from_status(&stats, &status, &listed);
        let want_id = if status.id.is_empty() { &listed_id } else { &status.id };
        prop_assert_eq!(s.id.as_str(), want_id.as_str());
        prop_assert_eq!(stats.unknown_values(), u64::from(!known_sandbox_state(status.state)));
        let ips = status.network.as_ref().map(sandbox_ips).unwrap_or_default();
        prop_assert!(ips.iter().all(|ip| !ip.is_empty()));
    }

    /// An event converts, or is skipped and counted once: an unknown type or
    /// an empty container ID. A converted one keeps its ID and type, its
    /// sandbox when that has an ID (with the pod's identity when the
    /// metadata names a UID), and every container status with an ID.
    #[test]
    fn every_event_converts_or_is_skipped_and_counted(event in event()) {
        let stats = RuntimeStats::default();
        let kind = ContainerEventKind::from_cri(event.container_event_type);
        let usable = kind.is_some() && !event.container_id.is_empty();
        let statuses = event.containers_statuses.iter().filter(|s| !s.id.is_empty()).count();
        let sandbox_id = event.pod_sandbox_status.as_ref().map(|s| s.id.clone()).filter(|id| !id.is_empty());
        let has_uid = event
            .pod_sandbox_status
            .as_ref()
            .and_then(|s| s.metadata.as_ref())
            .is_some_and(|m| !m.uid.is_empty());
        let id = event.container_id.clone();
        let at = time(event.created_at);
        let converted = event_from_cri(&stats, event);
        prop_assert_eq!(converted.is_some(), usable);
        prop_assert_eq!(stats.skipped_records(), u64::from(!usable));
        if let Some(e) = converted {
            prop_assert_eq!(e.id.as_str(), id.as_str());
            prop_assert_eq!(Some(e.kind), kind);
            prop_assert_eq!(e.created_at, at);
            prop_assert_eq!(e.containers.len(), statuses);
            prop_assert_eq!(e.sandbox.as_ref().map(|s| s.sandbox.id.as_str().to_string()), sandbox_id);
            if let Some(s) = &e.sandbox {
                prop_assert_eq!(s.pod.is_some(), has_uid);
            }
        }
    }
}

/// What `decode_container_state` gives, without counting.
fn stats_free_container_state(raw: i32) -> ContainerState {
    ContainerState::from_cri_container(raw).unwrap_or(ContainerState::Unknown)
}

/// The sandboxes with distinct IDs and pod UIDs, and the containers with
/// distinct IDs, each in one of those sandboxes (none when there are none).
fn regularised(
    mut sandboxes: Vec<cri::PodSandbox>,
    containers: Vec<cri::Container>,
    more: Vec<cri::Container>,
) -> (
    Vec<cri::PodSandbox>,
    Vec<cri::Container>,
    Vec<cri::Container>,
) {
    for (i, s) in sandboxes.iter_mut().enumerate() {
        s.id = format!("sandbox-{i}");
        let metadata = s.metadata.get_or_insert_with(Default::default);
        metadata.uid = format!("uid-{}", i % 4);
    }
    let place = |offset: usize, list: Vec<cri::Container>| -> Vec<cri::Container> {
        if sandboxes.is_empty() {
            return Vec::new();
        }
        list.into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                c.id = format!("container-{}", offset + i);
                c.pod_sandbox_id = sandboxes[i % sandboxes.len()].id.clone();
                c
            })
            .collect()
    };
    let containers = place(0, containers);
    let more = place(100, more);
    (sandboxes, containers, more)
}
