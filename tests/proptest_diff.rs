//! The diff core over generated listings: arbitrary old and new listings
//! (repeated pod UIDs, repeated container IDs, every state), checked
//! against the documented event table and order. A stand-in for fuzzing:
//! cargo-fuzz needs a nightly toolchain, which the project does not use.
//! 256 cases a property by default; `PROPTEST_CASES` raises it (CI: 4096).

#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

mod proptests {
    use std::collections::{BTreeMap, HashSet};
    use std::sync::Arc;

    use pleg::EventType;
    use pleg::diff::{Diff, DiffEvent, Records, diff};
    use pleg::model::{Container, ContainerState, EntryKind, Listing, Pod, PodMeta};
    use pleg::{PodUid, RuntimeCounts};
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// The kubelet's view of a state (created counts as unknown), or gone.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Seen {
        Running,
        Exited,
        Unknown,
    }

    fn seen(state: ContainerState) -> Seen {
        match state {
            ContainerState::Running => Seen::Running,
            ContainerState::Exited => Seen::Exited,
            ContainerState::Created | ContainerState::Unknown => Seen::Unknown,
        }
    }

    /// (pod, entry kind, ID) → what a subscriber should believe.
    type World = BTreeMap<(String, &'static str, String), Seen>;

    fn kind_name(kind: EntryKind) -> &'static str {
        match kind {
            EntryKind::Sandbox => "sandbox",
            _ => "container",
        }
    }

    fn state() -> impl Strategy<Value = ContainerState> {
        prop::sample::select(vec![
            ContainerState::Created,
            ContainerState::Running,
            ContainerState::Exited,
            ContainerState::Unknown,
        ])
    }

    /// Entries with IDs from a small pool, repeats included.
    fn entries(prefix: &'static str, max: usize) -> impl Strategy<Value = Vec<Container>> {
        vec((0u8..4, state()), 0..max).prop_map(move |v| {
            v.into_iter()
                .map(|(n, s)| Container::new(format!("{prefix}{n}"), format!("{prefix}{n}"), s))
                .collect()
        })
    }

    /// Pods with UIDs from a small pool (repeats are merged by the listing),
    /// sandbox IDs `s*` and container IDs `c*`, unique per pod's UID so
    /// that one ID belongs to one pod, as on a runtime.
    fn listing() -> impl Strategy<Value = Vec<Pod>> {
        vec(
            (
                prop::sample::select(vec!["a", "b", "c", "d"]),
                entries("s", 3),
                entries("c", 7),
            ),
            0..6,
        )
        .prop_map(|pods| {
            pods.into_iter()
                .map(|(uid, sandboxes, containers)| {
                    let mut p = Pod::new(PodMeta::new(uid, uid, "ns"));
                    let own = |c: Container| {
                        Container::new(format!("{uid}-{}", c.id.as_str()), c.name, c.state)
                    };
                    p.sandboxes = sandboxes.into_iter().map(own).collect();
                    p.containers = containers.into_iter().map(own).collect();
                    p
                })
                .collect()
        })
    }

    fn world_of(listing: &Listing) -> World {
        let mut world = World::new();
        for pod in listing.pods() {
            for (entries, kind) in [
                (&pod.sandboxes, EntryKind::Sandbox),
                (&pod.containers, EntryKind::Container),
            ] {
                for c in entries {
                    world
                        .entry((
                            pod.meta.uid.as_str().to_string(),
                            kind_name(kind),
                            c.id.as_str().to_string(),
                        ))
                        .or_insert(seen(c.state));
                }
            }
        }
        world
    }

    fn accept(records: &mut Records, d: &Diff) {
        for change in d.changes() {
            records.apply(&change.uid, change.new.as_ref());
        }
    }

    fn records_of(listing: &Listing) -> Records {
        let mut records = Records::new();
        let d = diff(&records, listing);
        accept(&mut records, &d);
        records
    }

    /// Applies one event to what a subscriber believes.
    fn apply(world: &mut World, uid: &PodUid, e: &DiffEvent) {
        let key = (
            uid.as_str().to_string(),
            kind_name(e.entry),
            e.id.as_str().to_string(),
        );
        match e.kind {
            EventType::ContainerStarted => {
                world.insert(key, Seen::Running);
            }
            EventType::ContainerDied => {
                world.insert(key, Seen::Exited);
            }
            EventType::ContainerChanged => {
                world.insert(key, Seen::Unknown);
            }
            EventType::ContainerRemoved => {
                world.remove(&key);
            }
            other => panic!("the diff made a {other:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::default())]

        /// Applying the diff's events to what the old listing showed gives
        /// what the new listing shows; each entry's transition is reported
        /// once (a DIED before REMOVED only for an entry that was not
        /// already exited); accepting the changes leaves nothing to diff.
        #[test]
        fn the_events_take_the_old_listing_to_the_new_one(old in listing(), new in listing()) {
            let old = Listing::new(old);
            let new_pods = new.clone();
            let new = Listing::new(new);
            let mut records = records_of(&old);
            let d = diff(&records, &new);

            let mut world = world_of(&old);
            let before = world.clone();
            let mut uids = HashSet::new();
            for change in d.changes() {
                prop_assert!(uids.insert(change.uid.clone()), "pod {} changed twice", change.uid.as_str());
                let events = d.events_of(change);
                prop_assert!(!events.is_empty(), "a change without events");
                let mut per_entry: BTreeMap<(&'static str, &str), Vec<EventType>> = BTreeMap::new();
                for e in events {
                    per_entry.entry((kind_name(e.entry), e.id.as_str())).or_default().push(e.kind);
                    apply(&mut world, &change.uid, e);
                }
                for ((kind, id), kinds) in per_entry {
                    let was = before.get(&(change.uid.as_str().to_string(), kind, id.to_string()));
                    let ok = match kinds.as_slice() {
                        [_] => true,
                        [EventType::ContainerDied, EventType::ContainerRemoved] => {
                            was != Some(&Seen::Exited)
                        }
                        _ => false,
                    };
                    prop_assert!(ok, "{} {} {}: {:?} (was {:?})", change.uid.as_str(), kind, id, kinds, was);
                }
            }
            prop_assert_eq!(&world, &world_of(&new));
            prop_assert_eq!(d.counts(), RuntimeCounts::of(&new));

            accept(&mut records, &d);
            prop_assert!(diff(&records, &new).is_empty(), "accepted, yet still different");
            // The runtime's order of pods does not matter. (When a UID
            // repeats with the same ID in different states, the first
            // sighting wins, so there the order does matter, by design.)
            let uids: HashSet<&str> = new_pods.iter().map(|p| p.meta.uid.as_str()).collect();
            if uids.len() == new_pods.len() {
                let mut reversed = new_pods.clone();
                reversed.reverse();
                prop_assert!(diff(&records, &Listing::new(reversed)).is_empty(), "order matters");
            }
        }

        /// Within a pod, the sandbox comes up first and the containers go
        /// down first: every sandbox's STARTED comes before every container
        /// event, and every container event before every other sandbox
        /// event.
        #[test]
        fn a_pod_comes_up_sandbox_first_and_goes_down_containers_first(
            old in listing(),
            new in listing(),
        ) {
            let records = records_of(&Listing::new(old));
            let d = diff(&records, &Listing::new(new));
            for change in d.changes() {
                let events = d.events_of(change);
                let phase = |e: &DiffEvent| match (e.entry, e.kind) {
                    (EntryKind::Sandbox, EventType::ContainerStarted) => 0,
                    (EntryKind::Container, _) => 1,
                    (EntryKind::Sandbox, _) => 2,
                };
                let phases: Vec<u8> = events.iter().map(phase).collect();
                prop_assert!(
                    phases.windows(2).all(|w| w[0] <= w[1]),
                    "pod {}: {:?}",
                    change.uid.as_str(),
                    events.iter().map(|e| (e.entry, e.kind, e.id.as_str())).collect::<Vec<_>>()
                );
            }
        }

        /// A pod that appears and one that vanishes: the listed pods' changes
        /// come in listing order, then the vanished ones; a vanished pod's
        /// every entry ends removed.
        #[test]
        fn vanished_pods_come_last_and_end_removed(old in listing(), new in listing()) {
            let old = Listing::new(old);
            let new = Listing::new(new);
            let d = diff(&records_of(&old), &new);
            let listed: Vec<&PodUid> = new.pods().iter().map(|p| p.uid()).collect();
            let mut last_listed = None;
            let mut seen_vanished = false;
            for change in d.changes() {
                match listed.iter().position(|u| **u == change.uid) {
                    Some(i) => {
                        prop_assert!(!seen_vanished, "a listed pod after a vanished one");
                        prop_assert!(last_listed.is_none_or(|l| l < i), "out of listing order");
                        last_listed = Some(i);
                        prop_assert!(change.new.is_some());
                    }
                    None => {
                        seen_vanished = true;
                        prop_assert!(change.new.is_none());
                        let old_pod = old.get(&change.uid).expect("it was listed before");
                        let removed: HashSet<&str> = d
                            .events_of(change)
                            .iter()
                            .filter(|e| e.kind == EventType::ContainerRemoved)
                            .map(|e| e.id.as_str())
                            .collect();
                        for c in old_pod.sandboxes.iter().chain(&old_pod.containers) {
                            prop_assert!(removed.contains(c.id.as_str()), "{} not removed", c.id.as_str());
                        }
                    }
                }
            }
        }

        /// The same listing twice, or a listing and its records, diff to
        /// nothing, whatever was repeated in it.
        #[test]
        fn an_unchanged_listing_diffs_to_nothing(pods in listing()) {
            let listing = Listing::new(pods.clone());
            let records = records_of(&listing);
            // A pod with no entries has no events, so no record.
            let with_entries = listing
                .pods()
                .iter()
                .filter(|p| !p.sandboxes.is_empty() || !p.containers.is_empty())
                .count();
            prop_assert_eq!(records.len(), with_entries);
            prop_assert!(diff(&records, &Listing::new(pods)).is_empty());
            for pod in listing.pods() {
                if let Some(recorded) = records.get(pod.uid()) {
                    prop_assert!(Arc::ptr_eq(recorded, pod));
                }
            }
        }
    }
}
