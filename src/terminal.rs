//! Terminal reports: one report each time a pod ends, with every
//! container's outcome, the way a process manager wants to hear of its
//! pods' terminations.
//!
//! Fed with lifecycle events ([`TerminalReports::observe`]), it keeps, per
//! pod, the latest known state of each container ID. A pod ends when:
//! - every container name's latest attempt has exited (at least one
//!   container): a report with phase `Succeeded` when every one of them
//!   exited with 0, else `Failed`;
//! - its sandbox is removed, or its last sandbox dies, while the pod has
//!   not ended that way: a report with phase `Deleted`. A container whose
//!   end the runtime never showed (it went away while running, between two
//!   relists: a death with no exit code) has not exited in this sense, so
//!   a pod stopped and removed between two relists is `Deleted`.
//!
//! It is one report per end: once reported, a pod reports again only after
//! one of its containers starts again (a restart, a new attempt), at its next
//! end. Deaths are deduplicated by container ID, so the same death seen
//! twice (by a relist and by the stream) counts once, while a restarted
//! container's next death, under a new ID, is never swallowed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use crate::event::{EventType, PodLifecycleEvent};
use crate::model::{ContainerId, ContainerState, EntryKind, PodMeta, PodStatus, PodUid};
use crate::naming::named_enum;

named_enum! {
    /// How a pod ended.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum TerminalPhase {
        /// Every container exited with 0.
        Succeeded = "Succeeded",
        /// Every container exited, one of them with another code.
        Failed = "Failed",
        /// The pod's sandbox went away before its containers ended.
        Deleted = "Deleted",
    }
}

/// The outcome of one container (its latest attempt) when its pod ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ContainerOutcome {
    /// Runtime ID.
    pub id: ContainerId,
    /// Container name.
    pub name: String,
    /// Restart attempt.
    pub attempt: u32,
    /// Whether it had exited (false: it was still running when the pod was
    /// deleted, or its end was never seen).
    pub exited: bool,
    /// Exit code, when it exited and the runtime said.
    pub exit_code: Option<i32>,
    /// The runtime's reason (`Completed`, `Error`, `OOMKilled`…).
    pub reason: Option<String>,
    /// When it started, when known.
    pub started_at: Option<SystemTime>,
    /// When it finished, when known.
    pub finished_at: Option<SystemTime>,
}

impl ContainerOutcome {
    /// A container known to have started, and nothing more yet.
    fn running(container: &crate::event::ContainerRef) -> Self {
        ContainerOutcome {
            id: container.id.clone(),
            name: container.name.clone(),
            attempt: container.attempt,
            exited: false,
            exit_code: None,
            reason: None,
            started_at: None,
            finished_at: None,
        }
    }
}

/// One end of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TerminalReport {
    /// The pod.
    pub pod: Arc<PodMeta>,
    /// How it ended.
    pub phase: TerminalPhase,
    /// Each container name's latest attempt, by name.
    pub containers: Vec<ContainerOutcome>,
    /// When the event that ended it was observed.
    pub at: SystemTime,
}

impl TerminalReport {
    /// The exit code that sums the pod up: the first non-zero code of its
    /// containers, else 0 (`None` when no container reported one).
    pub fn exit_code(&self) -> Option<i32> {
        let codes = self.containers.iter().filter_map(|c| c.exit_code);
        let mut any = None;
        for code in codes {
            if code != 0 {
                return Some(code);
            }
            any = Some(0);
        }
        any
    }
}

#[derive(Debug, Default)]
struct PodTrack {
    meta: Option<Arc<PodMeta>>,
    containers: HashMap<ContainerId, ContainerOutcome>,
    /// Sandboxes known to run.
    sandboxes_running: usize,
    /// Reported since the last start.
    reported: bool,
    /// Exited when [`TerminalReports::track`] read them, their death not
    /// yet seen as an event (it may still be queued).
    seeded: HashSet<ContainerId>,
}

/// Turns lifecycle events into terminal reports (see the module).
#[derive(Debug, Default)]
pub struct TerminalReports {
    pods: HashMap<PodUid, PodTrack>,
}

impl TerminalReports {
    /// A tracker that has seen nothing.
    pub fn new() -> Self {
        TerminalReports::default()
    }

    /// Pods being tracked.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Whether no pod is tracked.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// Notes one event; returns the report of the pod's end, when this
    /// event ended it.
    pub fn observe(&mut self, event: &PodLifecycleEvent) -> Option<TerminalReport> {
        let Some(container) = &event.container else {
            return None;
        };
        let track = self.pods.entry(event.pod.uid.clone()).or_default();
        track.meta = Some(event.pod.clone());
        match (container.kind, event.kind) {
            (EntryKind::Sandbox, EventType::ContainerStarted) => {
                track.sandboxes_running += 1;
                None
            }
            (EntryKind::Sandbox, EventType::ContainerDied) => {
                track.sandboxes_running = track.sandboxes_running.saturating_sub(1);
                if track.sandboxes_running == 0 {
                    Self::deleted(track, event.observed_at)
                } else {
                    None
                }
            }
            (EntryKind::Sandbox, EventType::ContainerRemoved) => {
                let report = Self::deleted(track, event.observed_at);
                self.pods.remove(&event.pod.uid);
                report
            }
            (EntryKind::Container, EventType::ContainerStarted) => {
                track.reported = false;
                let mut outcome = ContainerOutcome::running(container);
                outcome.started_at = event.runtime_time;
                track.containers.insert(container.id.clone(), outcome);
                None
            }
            (EntryKind::Container, EventType::ContainerDied) => {
                let outcome = track
                    .containers
                    .entry(container.id.clone())
                    .or_insert_with(|| ContainerOutcome::running(container));
                if outcome.exited && !track.seeded.remove(&container.id) {
                    // This death was seen already (dedup by ID).
                    return None;
                }
                // A death with no exit code is one the runtime never
                // showed (the container went away while running, between
                // two relists): not an end to judge, so the pod ends
                // `Deleted` when its sandbox goes, not `Failed` on a guess.
                outcome.exited = event.exit_code.is_some();
                outcome.exit_code = event.exit_code;
                outcome.reason.clone_from(&event.reason);
                outcome.started_at = event.started_at.or(outcome.started_at);
                outcome.finished_at = event.finished_at.or(event.runtime_time);
                Self::ended(track, event.observed_at)
            }
            _ => None,
        }
    }

    /// Starts tracking a pod from its status, as a subscriber that joins
    /// late reads the cache: its containers and running sandboxes become
    /// known, so that its end is reported with every container. Subscribe
    /// first, then track what the cache holds: a death the subscription
    /// still has queued is reported when it is observed, and one already
    /// past is not reported at all.
    pub fn track(&mut self, status: &PodStatus) {
        let track = self.pods.entry(status.meta.uid.clone()).or_default();
        track.meta = Some(status.meta.clone());
        track.sandboxes_running = status
            .sandboxes
            .iter()
            .filter(|s| s.state == ContainerState::Running)
            .count();
        for c in &status.containers {
            if track.containers.contains_key(&c.id) {
                continue;
            }
            let exited = c.state == ContainerState::Exited;
            if exited {
                track.seeded.insert(c.id.clone());
            }
            track.containers.insert(
                c.id.clone(),
                ContainerOutcome {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    attempt: c.attempt,
                    exited,
                    exit_code: c.exit_code,
                    reason: c.reason.clone(),
                    started_at: c.started_at,
                    finished_at: c.finished_at,
                },
            );
        }
    }

    /// Forgets a pod (say, once its report was handled and it is gone).
    pub fn forget(&mut self, uid: &PodUid) {
        self.pods.remove(uid);
    }

    /// The latest attempt of each container name.
    fn latest(track: &PodTrack) -> Vec<ContainerOutcome> {
        let mut latest: Vec<&ContainerOutcome> = Vec::new();
        for c in track.containers.values() {
            match latest.iter_mut().find(|l| l.name == c.name) {
                Some(l) => {
                    if (c.attempt, c.started_at) > (l.attempt, l.started_at) {
                        *l = c;
                    }
                }
                None => latest.push(c),
            }
        }
        let mut out: Vec<ContainerOutcome> = latest.into_iter().cloned().collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn ended(track: &mut PodTrack, at: SystemTime) -> Option<TerminalReport> {
        if track.reported {
            return None;
        }
        let containers = Self::latest(track);
        if containers.is_empty() || !containers.iter().all(|c| c.exited) {
            return None;
        }
        let phase = if containers.iter().all(|c| c.exit_code == Some(0)) {
            TerminalPhase::Succeeded
        } else {
            TerminalPhase::Failed
        };
        Self::report(track, phase, containers, at)
    }

    fn deleted(track: &mut PodTrack, at: SystemTime) -> Option<TerminalReport> {
        if track.reported {
            return None;
        }
        let containers = Self::latest(track);
        if !containers.is_empty() && containers.iter().all(|c| c.exited) {
            // Ended already, and reported then (or it had no start to end).
            return None;
        }
        Self::report(track, TerminalPhase::Deleted, containers, at)
    }

    fn report(
        track: &mut PodTrack,
        phase: TerminalPhase,
        containers: Vec<ContainerOutcome>,
        at: SystemTime,
    ) -> Option<TerminalReport> {
        let pod = track.meta.clone()?;
        track.reported = true;
        Some(TerminalReport {
            pod,
            phase,
            containers,
            at,
        })
    }
}

#[cfg(test)]
mod tests;
