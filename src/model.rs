//! Our own runtime model: identities, container states, the runtime's listing of
//! pods, and the pod status the cache holds.
//!
//! This module owns the vocabulary the core speaks. It must never depend on
//! protobuf types: the CRI adapter (`runtime::cri`) converts at the edge, and a
//! runtime value we do not understand becomes [`ContainerState::Unknown`] there,
//! never a panic here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Wraps an identifier as the runtime reported it.
            pub fn new(id: impl AsRef<str>) -> Self {
                Self(Arc::from(id.as_ref()))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self::new(id)
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                Self(Arc::from(id))
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// The UID of a pod (the Kubernetes object UID carried in the sandbox metadata).
    PodUid
);
string_id!(
    /// The runtime's ID of a container or of a pod sandbox.
    ContainerId
);

/// The state of a container or sandbox as the runtime reports it.
///
/// Sandboxes use [`Running`](Self::Running) for "ready" and
/// [`Exited`](Self::Exited) for "not ready".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContainerState {
    /// Created but not started. The generator treats it like `Unknown`.
    Created,
    /// Running (for a sandbox: ready).
    Running,
    /// Exited (for a sandbox: not ready).
    Exited,
    /// Unknown to the runtime, or a value we did not recognise.
    Unknown,
}

impl ContainerState {
    /// All states, in the order used by per-state counters.
    pub const ALL: [ContainerState; 4] = [
        ContainerState::Created,
        ContainerState::Running,
        ContainerState::Exited,
        ContainerState::Unknown,
    ];

    /// Lower-case name, as used in metrics labels and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Exited => "exited",
            ContainerState::Unknown => "unknown",
        }
    }

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

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ContainerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
    pub fn new(uid: impl Into<PodUid>, name: impl Into<String>, namespace: impl Into<String>) -> Self {
        PodMeta {
            uid: uid.into(),
            name: name.into(),
            namespace: namespace.into(),
            labels: BTreeMap::new(),
        }
    }

    /// Adds a label.
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
    /// The runtime's short reason ("Completed", "Error", "OOMKilled"), once exited.
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
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Sets the exit code and reason.
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
    /// Sandboxes, newest first as the runtime lists them.
    pub sandboxes: Vec<Container>,
    /// Containers.
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
    pub fn with_sandbox(mut self, sandbox: Container) -> Self {
        self.sandboxes.push(sandbox);
        self
    }

    /// Adds a container.
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
        self.containers
            .iter()
            .find(|c| &c.id == id)
            .map(|c| (c, EntryKind::Container))
            .or_else(|| {
                self.sandboxes
                    .iter()
                    .find(|c| &c.id == id)
                    .map(|c| (c, EntryKind::Sandbox))
            })
    }
}

/// Whether an entry of a pod is an application container or a pod sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A pod sandbox (the "pause" container and its namespaces).
    Sandbox,
    /// An application container.
    Container,
}

/// What the runtime listed in one relist: every pod with its sandboxes and
/// containers, each pod once and each ID once.
///
/// Construction normalises runtime data that would otherwise confuse the diff:
/// two entries for the same pod UID are merged, and a container or sandbox ID
/// listed twice is kept once (the first sighting wins). Both are counted in
/// [`Listing::duplicates_dropped`].
#[derive(Clone, Debug, Default)]
pub struct Listing {
    pods: Vec<Arc<Pod>>,
    index: HashMap<PodUid, usize>,
    duplicates_dropped: usize,
}

impl Listing {
    /// Builds a listing from the runtime's pods.
    pub fn new(pods: impl IntoIterator<Item = Pod>) -> Self {
        let mut merged: Vec<Pod> = Vec::new();
        let mut index: HashMap<PodUid, usize> = HashMap::new();
        let mut seen_ids: HashSet<ContainerId> = HashSet::new();
        let mut duplicates_dropped = 0;
        for pod in pods {
            let Pod {
                meta,
                sandboxes,
                containers,
            } = pod;
            let slot = match index.get(&meta.uid) {
                Some(&i) => {
                    duplicates_dropped += 1;
                    i
                }
                None => {
                    index.insert(meta.uid.clone(), merged.len());
                    merged.push(Pod {
                        meta,
                        sandboxes: Vec::with_capacity(sandboxes.len()),
                        containers: Vec::with_capacity(containers.len()),
                    });
                    merged.len() - 1
                }
            };
            let target = &mut merged[slot];
            for sandbox in sandboxes {
                if seen_ids.insert(sandbox.id.clone()) {
                    target.sandboxes.push(sandbox);
                } else {
                    duplicates_dropped += 1;
                }
            }
            for container in containers {
                if seen_ids.insert(container.id.clone()) {
                    target.containers.push(container);
                } else {
                    duplicates_dropped += 1;
                }
            }
        }
        Listing {
            pods: merged.into_iter().map(Arc::new).collect(),
            index,
            duplicates_dropped,
        }
    }

    /// The pods, in the order the runtime listed them.
    pub fn pods(&self) -> &[Arc<Pod>] {
        &self.pods
    }

    /// The pod with this UID, if listed.
    pub fn get(&self, uid: &PodUid) -> Option<&Arc<Pod>> {
        self.index.get(uid).map(|&i| &self.pods[i])
    }

    /// Whether the pod is listed.
    pub fn contains(&self, uid: &PodUid) -> bool {
        self.index.contains_key(uid)
    }

    /// Number of pods.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Whether no pod is listed.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// How many repeated pod UIDs and repeated container/sandbox IDs were
    /// folded away when the listing was built.
    pub fn duplicates_dropped(&self) -> usize {
        self.duplicates_dropped
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
    fn listing_merges_repeated_pods_and_drops_repeated_ids() {
        let a = Pod::new(PodMeta::new("a", "a", "ns"))
            .with_sandbox(Container::new("s1", "a", ContainerState::Running))
            .with_container(Container::new("c1", "app", ContainerState::Running))
            .with_container(Container::new("c1", "app", ContainerState::Exited));
        let a_again = Pod::new(PodMeta::new("a", "a", "ns"))
            .with_container(Container::new("c2", "side", ContainerState::Running));
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
        assert_eq!(ContainerState::from_cri_container(1), Some(ContainerState::Running));
        assert_eq!(ContainerState::from_cri_container(42), None);
        assert_eq!(ContainerState::from_cri_container(-1), None);
        assert_eq!(ContainerState::from_cri_sandbox(0), Some(ContainerState::Running));
        assert_eq!(ContainerState::from_cri_sandbox(7), None);
    }

    #[test]
    fn container_by_name_prefers_the_newest_attempt() {
        let mut status = PodStatus::new(Arc::new(PodMeta::new("p", "p", "ns")));
        status.containers.push(Container::new("old", "app", ContainerState::Exited));
        status
            .containers
            .push(Container::new("new", "app", ContainerState::Running).with_attempt(1));
        assert_eq!(
            status.container_by_name("app").map(|c| c.id.as_str()),
            Some("new")
        );
    }
}
