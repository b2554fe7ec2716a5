//! The diff core: previous records × new listing → events and the pods that
//! changed.
//!
//! Pure and synchronous. [`diff_into`] reads the records and the listing and
//! writes into a reusable [`Diff`]; it never touches the records. The caller
//! decides which changes to accept (a pod whose status fetch failed keeps its
//! old record, so the same transition is found again next time) and applies
//! them with [`Records::apply`].
//!
//! # The event table
//! Per container and per sandbox ID, from the old state to the new one (the
//! CRI `CREATED` state counts as unknown):
//!
//! | old → new                 | events                            |
//! |---------------------------|-----------------------------------|
//! | same → same               | none                              |
//! | any → running             | `ContainerStarted`                |
//! | any → exited              | `ContainerDied`                   |
//! | any → unknown             | `ContainerChanged`                |
//! | exited → gone             | `ContainerRemoved`                |
//! | running or unknown → gone | `ContainerDied`, `ContainerRemoved` |
//!
//! "any" includes "never seen": the first sighting of an exited container is a
//! `ContainerDied`.
//!
//! # Cost
//! When nothing changed, a diff does one hash lookup per pod and compares IDs
//! and states in place: it allocates nothing (the output buffers keep their
//! capacity between relists). `benches/diff.rs` measures it.
//!
//! # Order
//! Within a pod: sandboxes that are now running, then containers (listed,
//! then gone), then the other sandboxes (listed, then gone). A pod comes up
//! sandbox first and goes down containers first, also when its sandbox is
//! still listed (exited) while a container is already gone.

use std::ops::Range;
use std::sync::Arc;

use crate::event::EventType;
use crate::model::{
    Container, ContainerId, ContainerState, EntryKind, Listing, Pod, PodUid, RuntimeCounts,
    uid_hash,
};

/// What the generator remembers of each pod: the listing entry it last
/// accepted, with the IDs and states the diff compares laid out contiguously,
/// so an unchanged pod costs one short, linear read.
///
/// The records sit densely in a vector; the hash table holds only their
/// positions (small enough to stay in cache at 10,000 pods) and is probed with
/// the hash the listing already computed.
#[derive(Clone, Debug, Default)]
pub struct Records {
    index: hashbrown::HashTable<u32>,
    entries: Vec<Record>,
}

#[derive(Clone, Debug)]
struct Record {
    hash: u64,
    /// Kept inline so that finding a record reads no other memory.
    uid: PodUid,
    pod: Arc<Pod>,
    /// Sandboxes, then containers, in listing order.
    keys: Keys,
}

#[derive(Clone, Debug)]
struct EntryKey {
    presence: Presence,
    id: ContainerId,
}

/// Entries kept inside the record itself: a typical pod (a sandbox and a few
/// containers) is then one contiguous read, wherever the record sits.
const INLINE_KEYS: usize = 4;

// The inline variant is large on purpose: it is the common case, and keeping
// it inline is the point.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
enum Keys {
    Inline {
        len: usize,
        keys: [EntryKey; INLINE_KEYS],
    },
    Spilled(Box<[EntryKey]>),
}

impl Keys {
    fn new(len: usize, mut entries: impl Iterator<Item = EntryKey>) -> Self {
        if len > INLINE_KEYS {
            return Keys::Spilled(entries.collect());
        }
        let keys = std::array::from_fn(|_| {
            entries.next().unwrap_or(EntryKey {
                presence: Presence::Absent,
                id: ContainerId::new(""),
            })
        });
        Keys::Inline { len, keys }
    }

    fn as_slice(&self) -> &[EntryKey] {
        match self {
            Keys::Inline { len, keys } => &keys[..*len],
            Keys::Spilled(keys) => keys,
        }
    }
}

impl Record {
    fn new(pod: &Arc<Pod>, hash: u64) -> Self {
        let keys = Keys::new(
            pod.sandboxes.len() + pod.containers.len(),
            pod.sandboxes
                .iter()
                .chain(&pod.containers)
                .map(|c| EntryKey {
                    presence: presence(c.state),
                    id: c.id.clone(),
                }),
        );
        Record {
            hash,
            uid: pod.uid().clone(),
            pod: pod.clone(),
            keys,
        }
    }

    fn uid(&self) -> &PodUid {
        &self.uid
    }

    /// Whether the listed pod has the same IDs in the same states, in the same
    /// order.
    fn same_states(&self, new: &Pod) -> bool {
        let keys = self.keys.as_slice();
        let sandboxes = new.sandboxes.len();
        keys.len() == sandboxes + new.containers.len()
            && same_keys(&keys[..sandboxes], &new.sandboxes)
            && same_keys(&keys[sandboxes..], &new.containers)
    }
}

fn same_keys(keys: &[EntryKey], entries: &[Container]) -> bool {
    keys.iter()
        .zip(entries)
        .all(|(k, c)| k.presence == presence(c.state) && k.id == c.id)
}

impl Records {
    /// No records.
    pub fn new() -> Self {
        Records::default()
    }

    fn find(&self, uid: &PodUid, hash: u64) -> Option<&Record> {
        self.index
            .find(hash, |&i| self.entries[i as usize].uid() == uid)
            .map(|&i| &self.entries[i as usize])
    }

    /// The accepted listing entry of a pod.
    pub fn get(&self, uid: &PodUid) -> Option<&Arc<Pod>> {
        self.find(uid, uid_hash(uid)).map(|r| &r.pod)
    }

    /// Whether the pod has a record.
    pub fn contains(&self, uid: &PodUid) -> bool {
        self.get(uid).is_some()
    }

    /// Number of pods with a record.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no record.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The pod whose record holds this container or sandbox ID. A linear
    /// scan: for the rare event that names no pod.
    pub fn owner_of(&self, id: &ContainerId) -> Option<&PodUid> {
        self.entries
            .iter()
            .find(|r| r.keys.as_slice().iter().any(|k| k.id == *id))
            .map(Record::uid)
    }

    /// All records.
    pub fn iter(&self) -> impl Iterator<Item = (&PodUid, &Arc<Pod>)> {
        self.entries.iter().map(|r| (r.uid(), &r.pod))
    }

    /// Accepts a pod's new entry, or forgets the pod when `new` is `None`.
    pub fn apply(&mut self, uid: &PodUid, new: Option<&Arc<Pod>>) {
        let hash = uid_hash(uid);
        let entries = &self.entries;
        let found = self
            .index
            .find_entry(hash, |&i| entries[i as usize].uid() == uid);
        match (found, new) {
            (Ok(slot), Some(pod)) => {
                let i = *slot.get() as usize;
                self.entries[i] = Record::new(pod, hash);
            }
            (Err(_), Some(pod)) => {
                let position = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
                self.entries.push(Record::new(pod, hash));
                let entries = &self.entries;
                self.index
                    .insert_unique(hash, position, |&i| entries[i as usize].hash);
            }
            (Ok(slot), None) => {
                let removed = slot.remove().0 as usize;
                self.entries.swap_remove(removed);
                // The last record moved into the hole: point its index there.
                if let Some(moved) = self.entries.get(removed) {
                    let old_position = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
                    if let Some(i) = self.index.find_mut(moved.hash, |&i| i == old_position) {
                        *i = u32::try_from(removed).unwrap_or(u32::MAX);
                    }
                }
            }
            (Err(_), None) => {}
        }
    }
}

/// One generated transition of a container or sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffEvent {
    /// The event kind.
    pub kind: EventType,
    /// The container or sandbox.
    pub id: ContainerId,
    /// Sandbox or container.
    pub entry: EntryKind,
}

/// A pod with at least one generated event.
#[derive(Clone, Debug)]
pub struct PodChange {
    /// The pod.
    pub uid: PodUid,
    /// Its record before this listing (`None`: first sighting).
    pub old: Option<Arc<Pod>>,
    /// Its entry in this listing (`None`: gone from the runtime).
    pub new: Option<Arc<Pod>>,
    events: Range<usize>,
}

/// The output of a diff, reusable across relists.
#[derive(Clone, Debug, Default)]
pub struct Diff {
    changes: Vec<PodChange>,
    events: Vec<DiffEvent>,
    counts: RuntimeCounts,
}

impl Diff {
    /// An empty diff.
    pub fn new() -> Self {
        Diff::default()
    }

    /// The pods that changed, listed pods in listing order, then vanished pods.
    pub fn changes(&self) -> &[PodChange] {
        &self.changes
    }

    /// The events of one change, in emission order.
    pub fn events_of(&self, change: &PodChange) -> &[DiffEvent] {
        &self.events[change.events.clone()]
    }

    /// Every event, grouped by pod.
    pub fn events(&self) -> &[DiffEvent] {
        &self.events
    }

    /// The change of one pod, if it changed.
    pub fn change_of(&self, uid: &PodUid) -> Option<&PodChange> {
        self.changes.iter().find(|c| &c.uid == uid)
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Running pods and containers by state in the listing, counted on the
    /// same pass.
    pub fn counts(&self) -> RuntimeCounts {
        self.counts
    }

    fn clear(&mut self) {
        self.changes.clear();
        self.events.clear();
        self.counts = RuntimeCounts::default();
    }

    /// Gives back the room a burst left behind (the first listing of a
    /// large node has an event per container), keeping twice what this
    /// diff used, so that usual relists still reuse their buffers.
    pub(crate) fn trim(&mut self) {
        fn trim<T>(v: &mut Vec<T>) {
            if v.capacity() > 1024 && v.capacity() > 4 * v.len() {
                v.shrink_to(2 * v.len());
            }
        }
        trim(&mut self.changes);
        trim(&mut self.events);
    }
}

/// The transitions between two versions of one pod (`None`: not there), in
/// the same order as a relist's.
pub fn diff_pod(uid: &PodUid, old: Option<&Arc<Pod>>, new: Option<&Arc<Pod>>) -> Vec<DiffEvent> {
    let mut out = Diff::new();
    push_change(&mut out, uid, old, new);
    out.events
}

/// Diffs a listing against the records, into a fresh [`Diff`].
pub fn diff(records: &Records, listing: &Listing) -> Diff {
    let mut out = Diff::new();
    diff_into(records, listing, &mut out);
    out
}

/// Diffs a listing against the records, reusing `out`'s buffers.
pub fn diff_into(records: &Records, listing: &Listing, out: &mut Diff) {
    out.clear();
    let mut matched = 0usize;
    let mut counts = RuntimeCounts::default();
    for (pod, uid, hash) in listing.keyed_pods() {
        counts.add(pod);
        let record = records.find(uid, hash);
        if let Some(record) = record {
            matched += 1;
            // A pod the runtime adapter kept whole from the last listing
            // (its bytes did not change) is the very same pod.
            if Arc::ptr_eq(&record.pod, pod) || record.same_states(pod) {
                continue;
            }
        }
        push_change(out, uid, record.map(|r| &r.pod), Some(pod));
    }
    out.counts = counts;
    if matched < records.len() {
        for record in &records.entries {
            if listing.get_hashed(record.uid(), record.hash).is_none() {
                push_change(out, record.uid(), Some(&record.pod), None);
            }
        }
    }
}

/// The kubelet's view of a state: created counts as unknown, and an ID that is
/// not there has a state of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Presence {
    Running,
    Exited,
    Unknown,
    Absent,
}

fn presence(state: ContainerState) -> Presence {
    match state {
        ContainerState::Running => Presence::Running,
        ContainerState::Exited => Presence::Exited,
        ContainerState::Created | ContainerState::Unknown => Presence::Unknown,
    }
}

fn presence_in(pod: Option<&Arc<Pod>>, id: &ContainerId) -> Presence {
    pod.and_then(|p| p.find(id))
        .map_or(Presence::Absent, |(c, _)| presence(c.state))
}

fn transition(
    old: Presence,
    new: Presence,
    id: &ContainerId,
    entry: EntryKind,
    out: &mut Vec<DiffEvent>,
) {
    if old == new {
        return;
    }
    let mut emit = |kind| {
        out.push(DiffEvent {
            kind,
            id: id.clone(),
            entry,
        });
    };
    match new {
        Presence::Running => emit(EventType::ContainerStarted),
        Presence::Exited => emit(EventType::ContainerDied),
        Presence::Unknown => emit(EventType::ContainerChanged),
        Presence::Absent => {
            if old != Presence::Exited {
                emit(EventType::ContainerDied);
            }
            emit(EventType::ContainerRemoved);
        }
    }
}

/// Transitions of listed entries; `running` selects only entries that are
/// (`Some(true)`) or are not (`Some(false)`) running now.
fn listed_events(
    old: Option<&Arc<Pod>>,
    entries: &[Container],
    entry: EntryKind,
    running: Option<bool>,
    out: &mut Vec<DiffEvent>,
) {
    for c in entries {
        let now = presence(c.state);
        if running.is_none_or(|r| r == (now == Presence::Running)) {
            transition(presence_in(old, &c.id), now, &c.id, entry, out);
        }
    }
}

/// Transitions of the old record's containers or sandboxes that are gone.
fn gone_events(
    old: Option<&Arc<Pod>>,
    new: Option<&Arc<Pod>>,
    entry: EntryKind,
    out: &mut Vec<DiffEvent>,
) {
    let Some(pod) = old else { return };
    let entries = match entry {
        EntryKind::Sandbox => &pod.sandboxes,
        EntryKind::Container => &pod.containers,
    };
    for c in entries {
        if presence_in(new, &c.id) == Presence::Absent {
            transition(presence(c.state), Presence::Absent, &c.id, entry, out);
        }
    }
}

fn push_change(out: &mut Diff, uid: &PodUid, old: Option<&Arc<Pod>>, new: Option<&Arc<Pod>>) {
    let start = out.events.len();
    if let Some(pod) = new {
        listed_events(
            old,
            &pod.sandboxes,
            EntryKind::Sandbox,
            Some(true),
            &mut out.events,
        );
        listed_events(
            old,
            &pod.containers,
            EntryKind::Container,
            None,
            &mut out.events,
        );
    }
    gone_events(old, new, EntryKind::Container, &mut out.events);
    if let Some(pod) = new {
        listed_events(
            old,
            &pod.sandboxes,
            EntryKind::Sandbox,
            Some(false),
            &mut out.events,
        );
    }
    gone_events(old, new, EntryKind::Sandbox, &mut out.events);
    if out.events.len() > start {
        out.changes.push(PodChange {
            uid: uid.clone(),
            old: old.cloned(),
            new: new.cloned(),
            events: start..out.events.len(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PodMeta;
    use ContainerState::*;
    use EventType::*;

    fn pod(uid: &str, containers: &[(&str, ContainerState)]) -> Pod {
        containers
            .iter()
            .fold(Pod::new(PodMeta::new(uid, uid, "ns")), |p, (id, s)| {
                p.with_container(Container::new(*id, *id, *s))
            })
    }

    fn accept_all(records: &mut Records, d: &Diff) {
        for change in d.changes() {
            records.apply(&change.uid, change.new.as_ref());
        }
    }

    fn accept_listing(records: &mut Records, listing: &Listing) {
        let d = diff(records, listing);
        accept_all(records, &d);
    }

    fn kinds(d: &Diff, uid: &str) -> Vec<(EventType, String)> {
        d.change_of(&PodUid::new(uid))
            .map(|c| {
                d.events_of(c)
                    .iter()
                    .map(|e| (e.kind, e.id.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn every_cell_of_the_event_table() {
        let states = [
            (Some(Running), Presence::Running),
            (Some(Exited), Presence::Exited),
            (Some(Unknown), Presence::Unknown),
            (Some(Created), Presence::Unknown),
            (None, Presence::Absent),
        ];
        for (old_state, old_p) in states {
            for (new_state, new_p) in states {
                let listing_of =
                    |s: Option<ContainerState>| Listing::new(s.map(|s| pod("p", &[("c", s)])));
                let mut records = Records::new();
                accept_listing(&mut records, &listing_of(old_state));
                let d = diff(&records, &listing_of(new_state));
                let got: Vec<_> = kinds(&d, "p").into_iter().map(|(k, _)| k).collect();
                let want: Vec<EventType> = match (old_p, new_p) {
                    (a, b) if a == b => vec![],
                    (_, Presence::Running) => vec![ContainerStarted],
                    (_, Presence::Exited) => vec![ContainerDied],
                    (_, Presence::Unknown) => vec![ContainerChanged],
                    (Presence::Exited, Presence::Absent) => vec![ContainerRemoved],
                    (_, Presence::Absent) => vec![ContainerDied, ContainerRemoved],
                };
                assert_eq!(got, want, "{old_state:?} -> {new_state:?}");
            }
        }
    }

    #[test]
    fn unchanged_listing_yields_nothing_and_keeps_buffers() {
        let listing = Listing::new([pod("a", &[("c1", Running)]), pod("b", &[("c2", Exited)])]);
        let mut records = Records::new();
        let mut d = Diff::new();
        diff_into(&records, &listing, &mut d);
        assert_eq!(d.changes().len(), 2);
        accept_all(&mut records, &d);
        let again = Listing::new([pod("a", &[("c1", Running)]), pod("b", &[("c2", Exited)])]);
        diff_into(&records, &again, &mut d);
        assert!(d.is_empty());
    }

    #[test]
    fn created_to_unknown_is_no_change() {
        let mut records = Records::new();
        accept_listing(&mut records, &Listing::new([pod("a", &[("c", Created)])]));
        let d = diff(&records, &Listing::new([pod("a", &[("c", Unknown)])]));
        assert!(d.is_empty());
    }

    #[test]
    fn reordered_entries_are_not_a_change() {
        let mut records = Records::new();
        let first = Listing::new([pod("a", &[("c1", Running), ("c2", Exited)])]);
        accept_listing(&mut records, &first);
        let d = diff(
            &records,
            &Listing::new([pod("a", &[("c2", Exited), ("c1", Running)])]),
        );
        assert!(d.is_empty());
    }

    #[test]
    fn pod_comes_up_sandbox_first_and_goes_down_containers_first() {
        let up = Pod::new(PodMeta::new("p", "p", "ns"))
            .with_sandbox(Container::new("s", "p", Running))
            .with_container(Container::new("c", "app", Running));
        let mut records = Records::new();
        let d = diff(&records, &Listing::new([up]));
        let order: Vec<_> = d.events().iter().map(|e| (e.kind, e.entry)).collect();
        assert_eq!(
            order,
            [
                (ContainerStarted, EntryKind::Sandbox),
                (ContainerStarted, EntryKind::Container)
            ]
        );
        accept_all(&mut records, &d);
        let d = diff(&records, &Listing::default());
        let order: Vec<_> = d.events().iter().map(|e| (e.kind, e.entry)).collect();
        assert_eq!(
            order,
            [
                (ContainerDied, EntryKind::Container),
                (ContainerRemoved, EntryKind::Container),
                (ContainerDied, EntryKind::Sandbox),
                (ContainerRemoved, EntryKind::Sandbox),
            ]
        );
        assert!(d.changes()[0].new.is_none());
    }

    #[test]
    fn a_listed_pod_that_stops_reports_its_containers_before_its_sandbox() {
        let up = Pod::new(PodMeta::new("p", "p", "ns"))
            .with_sandbox(Container::new("s", "p", Running))
            .with_container(Container::new("c", "app", Running));
        let down = Pod::new(PodMeta::new("p", "p", "ns"))
            .with_sandbox(Container::new("s", "p", Exited))
            .with_container(Container::new("c", "app", Exited));
        let mut records = Records::new();
        accept_listing(&mut records, &Listing::new([up]));
        let d = diff(&records, &Listing::new([down]));
        let order: Vec<_> = d.events().iter().map(|e| (e.kind, e.entry)).collect();
        assert_eq!(
            order,
            [
                (ContainerDied, EntryKind::Container),
                (ContainerDied, EntryKind::Sandbox)
            ]
        );
    }

    #[test]
    fn a_gone_container_is_reported_before_its_sandbox_that_stopped() {
        // Found by tests/proptest_diff.rs: the sandbox's DIED used to come
        // before the DIED and REMOVED of a container already gone.
        let up = Pod::new(PodMeta::new("p", "p", "ns"))
            .with_sandbox(Container::new("s", "p", Running))
            .with_container(Container::new("c", "app", Running));
        let down =
            Pod::new(PodMeta::new("p", "p", "ns")).with_sandbox(Container::new("s", "p", Exited));
        let mut records = Records::new();
        accept_listing(&mut records, &Listing::new([up]));
        let d = diff(&records, &Listing::new([down]));
        let order: Vec<_> = d.events().iter().map(|e| (e.kind, e.entry)).collect();
        assert_eq!(
            order,
            [
                (ContainerDied, EntryKind::Container),
                (ContainerRemoved, EntryKind::Container),
                (ContainerDied, EntryKind::Sandbox),
            ]
        );
    }
}

#[cfg(test)]
mod record_tests {
    use super::*;
    use crate::model::PodMeta;

    #[test]
    fn pods_with_more_entries_than_fit_inline_diff_alike() {
        let big = |state| {
            (0..7).fold(
                Pod::new(PodMeta::new("big", "big", "ns")).with_sandbox(Container::new(
                    "s",
                    "big",
                    ContainerState::Running,
                )),
                |p, i| p.with_container(Container::new(format!("c{i}"), format!("c{i}"), state)),
            )
        };
        let mut records = Records::new();
        let first = diff(&records, &Listing::new([big(ContainerState::Running)]));
        assert_eq!(first.events().len(), 8);
        for change in first.changes() {
            records.apply(&change.uid, change.new.as_ref());
        }
        assert!(diff(&records, &Listing::new([big(ContainerState::Running)])).is_empty());
        let died = diff(&records, &Listing::new([big(ContainerState::Exited)]));
        assert_eq!(died.events().len(), 7);
        assert!(
            died.events()
                .iter()
                .all(|e| e.kind == EventType::ContainerDied)
        );
    }

    #[test]
    fn counts_taken_on_the_diff_pass_match_a_separate_count() {
        let listing = Listing::new([
            Pod::new(PodMeta::new("a", "a", "ns"))
                .with_sandbox(Container::new("s", "a", ContainerState::Running))
                .with_container(Container::new("c1", "x", ContainerState::Running))
                .with_container(Container::new("c2", "y", ContainerState::Exited)),
            Pod::new(PodMeta::new("b", "b", "ns"))
                .with_sandbox(Container::new("t", "b", ContainerState::Exited))
                .with_container(Container::new("d1", "z", ContainerState::Created)),
        ]);
        let counts = diff(&Records::new(), &listing).counts();
        assert_eq!(counts, RuntimeCounts::of(&listing));
        assert_eq!(counts.running_pods, 1);
        assert_eq!(counts.containers(ContainerState::Running), 1);
        assert_eq!(counts.containers(ContainerState::Exited), 1);
        assert_eq!(counts.containers(ContainerState::Created), 1);
    }

    #[test]
    fn records_stay_findable_through_inserts_updates_and_removals() {
        let mut records = Records::new();
        let pods: Vec<Arc<Pod>> = (0..50)
            .map(|i| Arc::new(Pod::new(PodMeta::new(format!("uid-{i}"), "p", "ns"))))
            .collect();
        for p in &pods {
            records.apply(p.uid(), Some(p));
        }
        // Remove every third pod, from the front, so moved records get re-indexed.
        for p in pods.iter().step_by(3) {
            records.apply(p.uid(), None);
        }
        records.apply(pods[1].uid(), Some(&pods[1]));
        for (i, p) in pods.iter().enumerate() {
            assert_eq!(records.get(p.uid()).is_some(), i % 3 != 0, "pod {i}");
        }
        assert_eq!(records.len(), 33);
        assert_eq!(records.iter().count(), 33);
    }
}
