//! Our own runtime model: identities, container states, the runtime's listing of
//! pods, and the pod status the cache holds.
//!
//! This module owns the vocabulary the core speaks. It must never depend on
//! protobuf types: the CRI adapter (`runtime::cri`) converts at the edge, and a
//! runtime value we do not understand becomes [`ContainerState::Unknown`] there,
//! never a panic here.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::naming::named_enum;

/// Longest identifier kept inline. CRI runtimes use 64-hex-digit IDs and
/// 36-character pod UIDs, so in practice every ID is inline.
const INLINE_ID: usize = 64;

/// The storage of an identifier: inline when short (comparing two IDs then
/// reads no other memory, which keeps the diff's hot loop cache-friendly),
/// shared on the heap otherwise.
#[derive(Clone)]
enum IdRepr {
    Inline { len: u8, bytes: [u8; INLINE_ID] },
    Shared(Arc<str>),
}

impl IdRepr {
    fn new(id: &str) -> Self {
        match u8::try_from(id.len()) {
            Ok(len) if id.len() <= INLINE_ID => {
                let mut bytes = [0u8; INLINE_ID];
                bytes[..id.len()].copy_from_slice(id.as_bytes());
                IdRepr::Inline { len, bytes }
            }
            _ => IdRepr::Shared(Arc::from(id)),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            IdRepr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            IdRepr::Shared(s) => s.as_bytes(),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // The bytes were copied whole from a `&str`, so they are valid
            // UTF-8 and the fallback is never taken.
            IdRepr::Inline { .. } => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            IdRepr::Shared(s) => s,
        }
    }
}

impl PartialEq for IdRepr {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (IdRepr::Inline { len: a, bytes: x }, IdRepr::Inline { len: b, bytes: y }) => {
                // Whole 16-byte blocks without early exit: the compiler turns
                // this into a few vector compares instead of a memcmp call.
                // Bytes past `len` are always zero, so they compare equal.
                let (x, _) = x.as_chunks::<16>();
                let (y, _) = y.as_chunks::<16>();
                a == b
                    && x.iter().zip(y).fold(true, |same, (p, q)| {
                        same & (u128::from_ne_bytes(*p) == u128::from_ne_bytes(*q))
                    })
            }
            _ => self.as_bytes() == other.as_bytes(),
        }
    }
}

impl Eq for IdRepr {}

impl std::hash::Hash for IdRepr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(self.as_bytes());
    }
}

impl PartialOrd for IdRepr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IdRepr {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(IdRepr);

        impl $name {
            /// Wraps an identifier as the runtime reported it.
            pub fn new(id: impl AsRef<str>) -> Self {
                Self(IdRepr::new(id.as_ref()))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }

            /// Whether the identifier is empty.
            pub fn is_empty(&self) -> bool {
                self.0.as_bytes().is_empty()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self::new(id)
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                Self::new(id)
            }
        }

        impl From<&String> for $name {
            fn from(id: &String) -> Self {
                Self::new(id)
            }
        }
    };
}

/// The hash of a pod UID, the same everywhere in this process: a listing
/// computes it once per pod and the diff reuses it to find the pod's record.
pub fn uid_hash(uid: &PodUid) -> u64 {
    use std::hash::BuildHasher;
    static SEED: std::sync::OnceLock<foldhash::fast::RandomState> = std::sync::OnceLock::new();
    SEED.get_or_init(foldhash::fast::RandomState::default)
        .hash_one(uid)
}

/// A hash set of our IDs, with a fast seeded hasher.
pub type IdSet<K> = HashSet<K, foldhash::fast::RandomState>;

string_id!(
    /// The UID of a pod (the Kubernetes object UID carried in the sandbox metadata).
    PodUid
);
string_id!(
    /// The runtime's ID of a container or of a pod sandbox.
    ContainerId
);

named_enum! {
    /// The state of a container or sandbox as the runtime reports it.
    ///
    /// Sandboxes use [`Running`](Self::Running) for "ready" and
    /// [`Exited`](Self::Exited) for "not ready".
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum ContainerState {
        /// Created but not started. The generator treats it like `Unknown`.
        Created = "created",
        /// Running (for a sandbox: ready).
        Running = "running",
        /// Exited (for a sandbox: not ready).
        Exited = "exited",
        /// Unknown to the runtime, or a value we did not recognise.
        Unknown = "unknown",
    }
}

impl ContainerState {
    /// Decodes a CRI v1 `ContainerState` number (0 created, 1 running,
    /// 2 exited, 3 unknown). Returns `None` for a value outside the enum, which
    /// the caller maps to [`Unknown`](Self::Unknown) and counts.
    pub fn from_cri_container(value: i32) -> Option<Self> {
        match value {
            0 => Some(ContainerState::Created),
            1 => Some(ContainerState::Running),
            2 => Some(ContainerState::Exited),
            3 => Some(ContainerState::Unknown),
            _ => None,
        }
    }

    /// Decodes a CRI v1 `PodSandboxState` number (0 ready, 1 not ready).
    /// Returns `None` for a value outside the enum.
    pub fn from_cri_sandbox(value: i32) -> Option<Self> {
        match value {
            0 => Some(ContainerState::Running),
            1 => Some(ContainerState::Exited),
            _ => None,
        }
    }
}

/// Who a pod is: its UID, name, namespace and labels, taken from the sandbox
/// metadata and labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMeta {
    /// The pod UID.
    pub uid: PodUid,
    /// The pod name.
    pub name: String,
    /// The pod namespace.
    pub namespace: String,
    /// The sandbox labels.
    pub labels: BTreeMap<String, String>,
}

impl PodMeta {
    /// A pod identity without labels.
    pub fn new(
        uid: impl Into<PodUid>,
        name: impl Into<String>,
        namespace: impl Into<String>,
    ) -> Self {
        PodMeta {
            uid: uid.into(),
            name: name.into(),
            namespace: namespace.into(),
            labels: BTreeMap::new(),
        }
    }

    /// Adds a label.
    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
}

/// A container or a pod sandbox as the runtime describes it.
///
/// A listing fills the identity, state and creation time; a status also fills
/// start and finish times, exit code and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// Runtime ID.
    pub id: ContainerId,
    /// Container name (for a sandbox: the pod name).
    pub name: String,
    /// Restart attempt, from the container metadata.
    pub attempt: u32,
    /// Current state.
    pub state: ContainerState,
    /// When the runtime created it.
    pub created_at: Option<SystemTime>,
    /// When it started, if it did.
    pub started_at: Option<SystemTime>,
    /// When it finished, if it did.
    pub finished_at: Option<SystemTime>,
    /// Exit code, once exited.
    pub exit_code: Option<i32>,
    /// The runtime's short reason ("Completed", "Error", "`OOMKilled`"), once exited.
    pub reason: Option<String>,
    /// Image reference (empty for sandboxes).
    pub image: String,
}

impl Container {
    /// A container with only an ID, a name and a state.
    pub fn new(id: impl Into<ContainerId>, name: impl Into<String>, state: ContainerState) -> Self {
        Container {
            id: id.into(),
            name: name.into(),
            attempt: 0,
            state,
            created_at: None,
            started_at: None,
            finished_at: None,
            exit_code: None,
            reason: None,
            image: String::new(),
        }
    }

    /// Sets the restart attempt.
    #[must_use]
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Sets the exit code and reason.
    #[must_use]
    pub fn with_exit(mut self, exit_code: i32, reason: impl Into<String>) -> Self {
        self.exit_code = Some(exit_code);
        self.reason = Some(reason.into());
        self
    }
}

/// One pod in a runtime listing: its identity, its sandboxes and its containers,
/// in every state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// Identity, shared with events and statuses.
    pub meta: Arc<PodMeta>,
    /// Sandboxes (in ID order once in a [`Listing`]).
    pub sandboxes: Vec<Container>,
    /// Containers (in ID order once in a [`Listing`]).
    pub containers: Vec<Container>,
}

impl Pod {
    /// A pod with no sandboxes or containers yet.
    pub fn new(meta: PodMeta) -> Self {
        Pod {
            meta: Arc::new(meta),
            sandboxes: Vec::new(),
            containers: Vec::new(),
        }
    }

    /// Adds a sandbox.
    #[must_use]
    pub fn with_sandbox(mut self, sandbox: Container) -> Self {
        self.sandboxes.push(sandbox);
        self
    }

    /// Adds a container.
    #[must_use]
    pub fn with_container(mut self, container: Container) -> Self {
        self.containers.push(container);
        self
    }

    /// The pod UID.
    pub fn uid(&self) -> &PodUid {
        &self.meta.uid
    }

    /// Finds a container or sandbox by ID, and says which it is.
    pub fn find(&self, id: &ContainerId) -> Option<(&Container, EntryKind)> {
        find_entry(&self.containers, id)
            .map(|c| (c, EntryKind::Container))
            .or_else(|| find_entry(&self.sandboxes, id).map(|c| (c, EntryKind::Sandbox)))
    }
}

/// Finds an entry by ID. Pods from a [`Listing`] keep their entries in ID
/// order, so a large pod is searched by bisection first (diffing a pod with
/// thousands of containers would otherwise be quadratic); a scan covers
/// entries in any other order and IDs that are absent.
fn find_entry<'a>(entries: &'a [Container], id: &ContainerId) -> Option<&'a Container> {
    if entries.len() > 16
        && let Ok(i) = entries.binary_search_by(|c| c.id.cmp(id))
    {
        return entries.get(i);
    }
    entries.iter().find(|c| &c.id == id)
}

named_enum! {
    /// Whether an entry of a pod is an application container or a pod sandbox.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum EntryKind {
        /// A pod sandbox (the "pause" container and its namespaces).
        Sandbox = "sandbox",
        /// An application container.
        Container = "container",
    }
}

/// What the runtime listed in one relist: every pod with its sandboxes and
/// containers, each pod once and each ID once.
///
/// Construction normalises runtime data that would otherwise confuse the diff:
/// two entries for the same pod UID are merged, and a container or sandbox ID
/// listed twice in a pod is kept once (the first sighting wins). Both are counted in
/// [`Listing::duplicates_dropped`]. Each pod's sandboxes and containers are
/// kept in ID order, so a runtime that lists them in a different order every
/// time (containerd lists from Go maps) still diffs on the fast path.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// Shared, so that handing a listing around costs one reference count.
    inner: Arc<ListingInner>,
}

#[derive(Debug, Default)]
struct ListingInner {
    pods: Vec<Arc<Pod>>,
    /// UID and `uid_hash` of each pod, by position, kept apart from the pods
    /// so that walking them reads memory in order.
    keys: Vec<(PodUid, u64)>,
    /// Positions in `pods`, found by `uid_hash`.
    index: hashbrown::HashTable<u32>,
    duplicates_dropped: usize,
}

impl Listing {
    /// Builds a listing from the runtime's pods.
    pub fn new(pods: impl IntoIterator<Item = Pod>) -> Self {
        // Each pod's entries are put in ID order (and de-duplicated) first,
        // while the pods are still in the order the runtime gave them, which
        // is the order their memory was allocated in: this pass reads
        // memory front to back instead of at random.
        let mut duplicates_dropped = 0;
        // Canonical order: by UID hash (stable, so the first sighting of a
        // repeated UID comes first). Whatever order the runtime lists pods in,
        // the same pods then come in the same order, and the diff walks the
        // records, which were created in that order, from front to back.
        let mut hashed: Vec<(u64, Pod)> = pods
            .into_iter()
            .map(|mut pod| {
                duplicates_dropped +=
                    in_id_order_once(&mut pod.sandboxes) + in_id_order_once(&mut pod.containers);
                (uid_hash(&pod.meta.uid), pod)
            })
            .collect();
        hashed.sort_by(|(a, p), (b, q)| canonical((*a, &p.meta.uid), (*b, &q.meta.uid)));

        let mut merged: Vec<Pod> = Vec::with_capacity(hashed.len());
        let mut keys: Vec<(PodUid, u64)> = Vec::with_capacity(hashed.len());
        for (hash, pod) in hashed {
            // A repeated UID sits among the pods with the same hash just before.
            let same_hash = keys.iter().rev().take_while(|(_, h)| *h == hash).count();
            let first = keys.len() - same_hash;
            if let Some(offset) = keys[first..]
                .iter()
                .position(|(uid, _)| *uid == pod.meta.uid)
            {
                duplicates_dropped += 1;
                let target = &mut merged[first + offset];
                target.sandboxes.extend(pod.sandboxes);
                target.containers.extend(pod.containers);
                // Merged entries are in order and unique again only once
                // sorted together (rare: a runtime listing one pod twice).
                duplicates_dropped += in_id_order_once(&mut target.sandboxes)
                    + in_id_order_once(&mut target.containers);
            } else {
                keys.push((pod.meta.uid.clone(), hash));
                merged.push(pod);
            }
        }
        // The entries are not copied into fresh vectors allocated in the
        // canonical order. That repacking made a no-change diff of 10,000
        // pods 1.3 ms faster (`cargo bench --bench diff`, `diff/10000/0`,
        // 1.9 → 0.6 ms), but cost two allocations, two frees and a copy per
        // pod on memory that no longer fits in cache, which grew faster
        // than the pod count: 8.7 → 16–41 ms at 10,000 pods and 72 → 200 ms
        // at 50,000 (`cargo bench --bench relist`, `listing/*`), so every
        // relist paid far more for it than the diff saved.
        Listing::indexed(
            merged.into_iter().map(Arc::new).collect(),
            keys,
            duplicates_dropped,
        )
    }

    /// A listing of pods with distinct UIDs: `ordered` with their entries
    /// already in ID order and without repeated IDs (the pods of an earlier
    /// listing, kept whole), `fresh` not yet. The same pods give the same
    /// listing as [`Listing::new`].
    pub(crate) fn of_distinct_pods(ordered: Vec<Arc<Pod>>, fresh: Vec<Pod>) -> Self {
        let mut duplicates_dropped = 0;
        let mut hashed: Vec<(u64, Arc<Pod>)> = Vec::with_capacity(ordered.len() + fresh.len());
        hashed.extend(
            ordered
                .into_iter()
                .map(|pod| (uid_hash(&pod.meta.uid), pod)),
        );
        hashed.extend(fresh.into_iter().map(|mut pod| {
            duplicates_dropped +=
                in_id_order_once(&mut pod.sandboxes) + in_id_order_once(&mut pod.containers);
            (uid_hash(&pod.meta.uid), Arc::new(pod))
        }));
        hashed.sort_by(|(a, p), (b, q)| canonical((*a, &p.meta.uid), (*b, &q.meta.uid)));
        let keys = hashed
            .iter()
            .map(|(hash, pod)| (pod.meta.uid.clone(), *hash))
            .collect();
        let pods = hashed.into_iter().map(|(_, pod)| pod).collect();
        Listing::indexed(pods, keys, duplicates_dropped)
    }

    fn indexed(pods: Vec<Arc<Pod>>, keys: Vec<(PodUid, u64)>, duplicates_dropped: usize) -> Self {
        let mut index: hashbrown::HashTable<u32> = hashbrown::HashTable::with_capacity(keys.len());
        for (position, (_, hash)) in keys.iter().enumerate() {
            let position = u32::try_from(position).unwrap_or(u32::MAX);
            index.insert_unique(*hash, position, |&j| keys[j as usize].1);
        }
        Listing {
            inner: Arc::new(ListingInner {
                pods,
                keys,
                index,
                duplicates_dropped,
            }),
        }
    }

    /// Whether `other` is this very listing (a clone of it), not only an
    /// equal one.
    pub fn is_same(&self, other: &Listing) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The pods, in a canonical order (by UID hash) that does not depend on
    /// the order the runtime listed them in.
    pub fn pods(&self) -> &[Arc<Pod>] {
        &self.inner.pods
    }

    /// The pods with their UID and [`uid_hash`].
    pub fn keyed_pods(&self) -> impl Iterator<Item = (&Arc<Pod>, &PodUid, u64)> {
        self.inner
            .pods
            .iter()
            .zip(&self.inner.keys)
            .map(|(p, (uid, hash))| (p, uid, *hash))
    }

    /// The pod with this UID, if listed.
    pub fn get(&self, uid: &PodUid) -> Option<&Arc<Pod>> {
        self.get_hashed(uid, uid_hash(uid))
    }

    /// The pod with this UID, given its [`uid_hash`].
    pub fn get_hashed(&self, uid: &PodUid, hash: u64) -> Option<&Arc<Pod>> {
        self.inner
            .index
            .find(hash, |&i| self.inner.keys[i as usize].0 == *uid)
            .map(|&i| &self.inner.pods[i as usize])
    }

    /// Whether the pod is listed.
    pub fn contains(&self, uid: &PodUid) -> bool {
        self.get(uid).is_some()
    }

    /// Number of pods.
    pub fn len(&self) -> usize {
        self.inner.pods.len()
    }

    /// Whether no pod is listed.
    pub fn is_empty(&self) -> bool {
        self.inner.pods.is_empty()
    }

    /// How many repeated pod UIDs and repeated container/sandbox IDs were
    /// folded away when the listing was built.
    pub fn duplicates_dropped(&self) -> usize {
        self.inner.duplicates_dropped
    }
}

/// The canonical order of a listing's pods: by UID hash, ties (distinct
/// UIDs, all but never) by UID, so that the order is the same however the
/// pods were listed.
fn canonical(a: (u64, &PodUid), b: (u64, &PodUid)) -> std::cmp::Ordering {
    a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1))
}

/// Sorts entries by ID and drops repeated IDs, keeping the first sighting (the
/// sort is stable). Returns how many were dropped.
fn in_id_order_once(entries: &mut Vec<Container>) -> usize {
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    let before = entries.len();
    entries.dedup_by(|later, first| later.id == first.id);
    before - entries.len()
}

/// Pods with a running sandbox, and containers by state, in a listing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeCounts {
    /// Pods with at least one running (ready) sandbox.
    pub running_pods: usize,
    // One field per state rather than an array: a local tally then lives in
    // registers inside the diff's loop.
    created: usize,
    running: usize,
    exited: usize,
    unknown: usize,
}

impl RuntimeCounts {
    /// Counts a listing.
    pub fn of(listing: &Listing) -> Self {
        let mut counts = RuntimeCounts::default();
        for pod in listing.pods() {
            counts.add(pod);
        }
        counts
    }

    /// Adds one pod to the counts.
    #[inline]
    pub fn add(&mut self, pod: &Pod) {
        if pod
            .sandboxes
            .iter()
            .any(|s| s.state == ContainerState::Running)
        {
            self.running_pods += 1;
        }
        for c in &pod.containers {
            match c.state {
                ContainerState::Created => self.created += 1,
                ContainerState::Running => self.running += 1,
                ContainerState::Exited => self.exited += 1,
                ContainerState::Unknown => self.unknown += 1,
            }
        }
    }

    /// Takes a pod out of the counts (the inverse of [`add`](Self::add)).
    pub fn remove(&mut self, pod: &Pod) {
        if pod
            .sandboxes
            .iter()
            .any(|s| s.state == ContainerState::Running)
        {
            self.running_pods = self.running_pods.saturating_sub(1);
        }
        for c in &pod.containers {
            let slot = match c.state {
                ContainerState::Created => &mut self.created,
                ContainerState::Running => &mut self.running,
                ContainerState::Exited => &mut self.exited,
                ContainerState::Unknown => &mut self.unknown,
            };
            *slot = slot.saturating_sub(1);
        }
    }

    /// Containers (not sandboxes) in any state.
    pub fn all_containers(&self) -> usize {
        self.created + self.running + self.exited + self.unknown
    }

    /// Containers (not sandboxes) in a state.
    pub fn containers(&self, state: ContainerState) -> usize {
        match state {
            ContainerState::Created => self.created,
            ContainerState::Running => self.running,
            ContainerState::Exited => self.exited,
            ContainerState::Unknown => self.unknown,
        }
    }
}

/// The status of one pod, as the cache holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodStatus {
    /// Identity.
    pub meta: Arc<PodMeta>,
    /// Sandbox statuses, newest first.
    pub sandboxes: Vec<Container>,
    /// Container statuses.
    pub containers: Vec<Container>,
    /// Pod IPs, primary first.
    pub ips: Vec<String>,
    /// The runtime's time for this status (for example an event's `created_at`),
    /// when it gave one.
    pub timestamp: Option<SystemTime>,
}

impl PodStatus {
    /// An empty status for a pod.
    pub fn new(meta: Arc<PodMeta>) -> Self {
        PodStatus {
            meta,
            sandboxes: Vec::new(),
            containers: Vec::new(),
            ips: Vec::new(),
            timestamp: None,
        }
    }

    /// A status that mirrors a listing entry: the same sandboxes and containers,
    /// no IPs. Useful for runtimes and tests that have nothing more to say.
    pub fn from_pod(pod: &Pod) -> Self {
        PodStatus {
            meta: pod.meta.clone(),
            sandboxes: pod.sandboxes.clone(),
            containers: pod.containers.clone(),
            ips: Vec::new(),
            timestamp: None,
        }
    }

    /// The pod UID.
    pub fn uid(&self) -> &PodUid {
        &self.meta.uid
    }

    /// The container status with this name. When several attempts exist, the
    /// highest attempt wins (the newest container of that name).
    pub fn container_by_name(&self, name: &str) -> Option<&Container> {
        self.containers
            .iter()
            .filter(|c| c.name == name)
            .max_by_key(|c| c.attempt)
    }

    /// The container or sandbox status with this ID.
    pub fn find(&self, id: &ContainerId) -> Option<&Container> {
        self.containers
            .iter()
            .chain(self.sandboxes.iter())
            .find(|c| &c.id == id)
    }

    /// Whether any sandbox is ready.
    pub fn has_ready_sandbox(&self) -> bool {
        self.sandboxes
            .iter()
            .any(|s| s.state == ContainerState::Running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_compare_hash_and_print_alike_whether_inline_or_shared() {
        let short = ContainerId::new("abc");
        let long_text = "x".repeat(100);
        let long = ContainerId::new(&long_text);
        assert_eq!(short.as_str(), "abc");
        assert_eq!(long.as_str(), long_text);
        assert_eq!(long, ContainerId::from(long_text.clone()));
        assert_ne!(short, long);
        assert!(ContainerId::new("a") < ContainerId::new("b"));
        assert!(ContainerId::new("").is_empty());
        let mut set = IdSet::default();
        set.insert(long.clone());
        assert!(set.contains(&ContainerId::new(&long_text)));
        assert_eq!(format!("{short:?}"), "\"abc\"");
    }

    #[test]
    fn listing_merges_repeated_pods_and_drops_repeated_ids() {
        let a = Pod::new(PodMeta::new("a", "a", "ns"))
            .with_sandbox(Container::new("s1", "a", ContainerState::Running))
            .with_container(Container::new("c1", "app", ContainerState::Running))
            .with_container(Container::new("c1", "app", ContainerState::Exited));
        let a_again = Pod::new(PodMeta::new("a", "a", "ns")).with_container(Container::new(
            "c2",
            "side",
            ContainerState::Running,
        ));
        let listing = Listing::new([a, a_again]);
        assert_eq!(listing.len(), 1);
        let pod = listing.get(&PodUid::new("a")).expect("pod a listed");
        let ids: Vec<_> = pod.containers.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["c1", "c2"]);
        assert_eq!(pod.containers[0].state, ContainerState::Running);
        assert_eq!(listing.duplicates_dropped(), 2);
    }

    #[test]
    fn cri_numbers_outside_the_enum_are_not_guessed() {
        assert_eq!(
            ContainerState::from_cri_container(1),
            Some(ContainerState::Running)
        );
        assert_eq!(ContainerState::from_cri_container(42), None);
        assert_eq!(ContainerState::from_cri_container(-1), None);
        assert_eq!(
            ContainerState::from_cri_sandbox(0),
            Some(ContainerState::Running)
        );
        assert_eq!(ContainerState::from_cri_sandbox(7), None);
    }

    #[test]
    fn container_by_name_prefers_the_newest_attempt() {
        let mut status = PodStatus::new(Arc::new(PodMeta::new("p", "p", "ns")));
        status
            .containers
            .push(Container::new("old", "app", ContainerState::Exited));
        status
            .containers
            .push(Container::new("new", "app", ContainerState::Running).with_attempt(1));
        assert_eq!(
            status.container_by_name("app").map(|c| c.id.as_str()),
            Some("new")
        );
    }
}
