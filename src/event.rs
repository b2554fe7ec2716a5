//! Pod lifecycle events: what subscribers receive.
//!
//! An event names its pod (identity and labels), its kind, and where a
//! container is concerned, which one, with the exit code and reason when the
//! runtime told us. Every event records its [`EventSource`], so a consumer can
//! tell a transition seen on the runtime's event stream from one found by
//! relisting.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::model::{ContainerId, EntryKind, PodMeta};
use crate::naming::named_enum;

named_enum! {
    /// The kind of a pod lifecycle event. The names follow the kubelet's.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    #[non_exhaustive]
    pub enum EventType {
        /// A container or sandbox is now running.
        ContainerStarted = "ContainerStarted",
        /// A container or sandbox has exited (or vanished while running).
        ContainerDied = "ContainerDied",
        /// A container or sandbox is gone from the runtime.
        ContainerRemoved = "ContainerRemoved",
        /// The pod changed in a way no single event above captures, or was
        /// reinspected on request.
        PodSync = "PodSync",
        /// A container entered the unknown (or created) state. Generated, but
        /// only delivered to subscribers that ask for it.
        ContainerChanged = "ContainerChanged",
        /// One or more watch conditions of the pod were met.
        ConditionMet = "ConditionMet",
    }
}

named_enum! {
    /// Where the generator learned of a transition.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum EventSource {
        /// Found by diffing a relist against the previous records.
        Relist = "relist",
        /// Reported by the runtime's `GetContainerEvents` stream.
        Stream = "stream",
    }
}

/// The container or sandbox an event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRef {
    /// Runtime ID.
    pub id: ContainerId,
    /// Container name (for a sandbox: the pod name).
    pub name: String,
    /// Restart attempt.
    pub attempt: u32,
    /// Sandbox or application container.
    pub kind: EntryKind,
}

/// A change in the life of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLifecycleEvent {
    /// The pod: UID, name, namespace, labels.
    pub pod: Arc<PodMeta>,
    /// What happened.
    pub kind: EventType,
    /// The container or sandbox concerned; `None` for `PodSync` and `ConditionMet`.
    pub container: Option<ContainerRef>,
    /// Exit code, for `ContainerDied` when the runtime reported one.
    pub exit_code: Option<i32>,
    /// The runtime's reason ("Completed", "Error", "`OOMKilled`"), when known.
    pub reason: Option<String>,
    /// Where the transition was seen.
    pub source: EventSource,
    /// The runtime's own time for the transition, when known: a stream
    /// event's `created_at`; for relisted events, the container's start time
    /// (`ContainerStarted`) or finish time (`ContainerDied`).
    pub runtime_time: Option<SystemTime>,
    /// When the generator emitted the event (its clock's time).
    pub observed_at: SystemTime,
    /// For `ContainerDied`: when the container started, as its status says.
    pub started_at: Option<SystemTime>,
    /// For `ContainerDied`: when it finished, as its status says.
    pub finished_at: Option<SystemTime>,
    /// The event's sequence number in the hub's run, set when it is
    /// published (see [`seq`](Self::seq)).
    pub(crate) seq: Seq,
}

impl PodLifecycleEvent {
    /// An event about the pod as a whole, observed at `observed_at`; set
    /// `container`, `exit_code`, `reason` and `runtime_time` afterwards where
    /// they apply.
    pub fn new(
        pod: Arc<PodMeta>,
        kind: EventType,
        source: EventSource,
        observed_at: SystemTime,
    ) -> Self {
        PodLifecycleEvent {
            pod,
            kind,
            container: None,
            exit_code: None,
            reason: None,
            source,
            runtime_time: None,
            observed_at,
            started_at: None,
            finished_at: None,
            seq: Seq::default(),
        }
    }

    /// The event's sequence number: it rises by one per item the hub
    /// publishes in a run (see [`crate::hub::Epoch`]). `None` until
    /// published, for the items of an initial state, and for
    /// `ContainerChanged`, a hint that follows the numbered item before it.
    pub fn seq(&self) -> Option<u64> {
        self.seq.get()
    }

    /// The event with this sequence number (a client reading one off the
    /// wire; the hub numbers what it publishes itself).
    #[must_use]
    pub fn with_seq(self, seq: u64) -> Self {
        PodLifecycleEvent {
            seq: Seq(AtomicU64::new(seq)),
            ..self
        }
    }

    /// The container ID, when the event concerns one.
    pub fn container_id(&self) -> Option<&ContainerId> {
        self.container.as_ref().map(|c| &c.id)
    }
}

/// An event's sequence number, set once when the hub publishes it (0: not
/// yet; sequence numbers start at 1). One atomic word: publishing numbers
/// every event under the core's lock.
#[derive(Debug, Default)]
pub(crate) struct Seq(AtomicU64);

impl Seq {
    pub(crate) fn get(&self) -> Option<u64> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            seq => Some(seq),
        }
    }

    /// Sets it unless it was set; `false` if it was.
    pub(crate) fn set(&self, seq: u64) -> bool {
        self.0
            .compare_exchange(0, seq, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl Clone for Seq {
    fn clone(&self) -> Self {
        Seq(AtomicU64::new(self.0.load(Ordering::Acquire)))
    }
}

impl PartialEq for Seq {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for Seq {}

impl fmt::Display for PodLifecycleEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} ({}) {}",
            self.pod.namespace, self.pod.name, self.pod.uid, self.kind
        )?;
        if let Some(c) = &self.container {
            write!(f, " {} {} attempt {} ({})", c.kind, c.name, c.attempt, c.id)?;
        }
        if let Some(code) = self.exit_code {
            write!(f, " exit {code}")?;
        }
        if let Some(reason) = &self.reason {
            write!(f, " reason {reason}")?;
        }
        write!(f, " via {}", self.source.as_str())
    }
}
