//! The ground truth: every transition the bench causes, stamped when the
//! driver call that caused it returned, and for exits with the runtime's own
//! `finished_at` (from `ContainerStatus`) and exit code.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use pleg::EventType;
use serde::Serialize;

/// Sandbox or container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Entry {
    Sandbox,
    Container,
}

/// What happened to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Transition {
    /// CreateContainer returned (pleg reports it only as the
    /// `ContainerChanged` hint, not delivered by default: not matched).
    Created,
    Started,
    Exited,
    Removed,
}

impl Transition {
    /// The event pleg owes for it.
    pub fn event(self) -> Option<EventType> {
        match self {
            Transition::Created => None,
            Transition::Started => Some(EventType::ContainerStarted),
            Transition::Exited => Some(EventType::ContainerDied),
            Transition::Removed => Some(EventType::ContainerRemoved),
        }
    }
}

/// One transition.
#[derive(Clone, Debug, Serialize)]
pub struct Truth {
    pub id: String,
    pub entry: Entry,
    pub transition: Transition,
    /// When the driver call returned.
    pub call_returned: SystemTime,
    /// For exits: the runtime's `finished_at`.
    pub finished_at: Option<SystemTime>,
    /// For exits: how long the container ran (`finished_at - started_at`).
    pub lifetime: Option<Duration>,
    /// For exits: the exit code the runtime reports.
    pub exit_code: Option<i32>,
    /// Caused (or its exit fell) while containerd was down.
    pub during_outage: bool,
}

impl Truth {
    /// The time latency is measured from: the runtime's `finished_at` for an
    /// exit, else when the call returned.
    pub fn reference(&self) -> SystemTime {
        self.finished_at.unwrap_or(self.call_returned)
    }
}

/// An outage: from, and until (`None` while it lasts).
type Outage = (SystemTime, Option<SystemTime>);

/// Where the workload records; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    inner: Arc<Mutex<Vec<Truth>>>,
    outage: Arc<Mutex<Option<Outage>>>,
}

impl Recorder {
    pub fn record(&self, mut truth: Truth) {
        if let Some((from, to)) = *self.outage.lock() {
            let at = truth.reference();
            truth.during_outage = at >= from && to.is_none_or(|to| at <= to);
        }
        self.inner.lock().push(truth);
    }

    /// Everything recorded since the last take.
    pub fn take(&self) -> Vec<Truth> {
        std::mem::take(&mut *self.inner.lock())
    }

    /// Marks the start (`to` None) or the whole of an outage.
    pub fn set_outage(&self, from: SystemTime, to: Option<SystemTime>) {
        *self.outage.lock() = Some((from, to));
    }

    pub fn clear_outage(&self) {
        *self.outage.lock() = None;
    }
}

/// A transition stamped now.
pub fn now(id: &str, entry: Entry, transition: Transition) -> Truth {
    Truth {
        id: id.to_string(),
        entry,
        transition,
        call_returned: SystemTime::now(),
        finished_at: None,
        lifetime: None,
        exit_code: None,
        during_outage: false,
    }
}
