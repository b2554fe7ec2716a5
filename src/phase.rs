//! A pod's phase and health, derived from what the runtime says of its
//! sandboxes and containers.
//!
//! The runtime knows nothing of a pod's restart policy or readiness probes,
//! so these are the node's view: what the containers are doing now. Only the
//! latest attempt of each container name counts (the highest attempt; on a
//! tie, the newest), and only the newest sandbox.
//!
//! | the latest attempts | phase | health (reason) |
//! |---|---|---|
//! | no sandbox and no container | `Unknown` | `Unknown` (`NoStatus`) |
//! | the sandbox is not ready, nothing runs, not every container exited | `Failed` | `Failed` (`SandboxNotReady`) |
//! | some container is running, and every container runs with a ready sandbox | `Running` | `Ready` |
//! | some container is running, others are not, or the sandbox is not ready | `Running` | `NotReady` (`ContainerNotRunning` naming one, or `SandboxNotReady`) |
//! | none runs, and one is in an unknown state | `Unknown` | `Unknown` (`ContainerUnknown` naming it) |
//! | every container exited with 0 | `Succeeded` | `Succeeded` |
//! | every container exited, one of them with another code | `Failed` | `Failed` (`Error` naming it and its code, or the runtime's reason such as `OOMKilled`) |
//! | none runs, some are created but not started (or there are none yet) | `Pending` | `NotReady` (`ContainerCreating`) |
//! | any, while a container crash-loops ([`CrashLoops`]) | as above | `Failed` (`CrashLoop` naming it) |
//!
//! A crash loop is N exits with a non-zero code, on rising attempts of the
//! same container name of the same pod, within a window (3 exits in 5
//! minutes by default, both configurable).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, SystemTime};

use crate::event::{EventType, PodLifecycleEvent};
use crate::model::{Container, ContainerState, EntryKind, PodStatus, PodUid};
use crate::naming::named_enum;

named_enum! {
    /// A pod's phase, as Kubernetes names them.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum PodPhase {
        /// Accepted, but not every container has started.
        Pending = "Pending",
        /// At least one container runs.
        Running = "Running",
        /// Every container exited with 0.
        Succeeded = "Succeeded",
        /// Every container exited, one with another code (or the sandbox
        /// went away before they ran).
        Failed = "Failed",
        /// The runtime's answer does not tell.
        Unknown = "Unknown",
    }
}

named_enum! {
    /// A pod's health, in the classes a test orchestrator uses.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Health {
        /// Not known (no status, or a container in an unknown state).
        Unknown = "Unknown",
        /// Every container runs, with a ready sandbox.
        Ready = "Ready",
        /// Running or pending, but not every container runs.
        NotReady = "NotReady",
        /// Ended well.
        Succeeded = "Succeeded",
        /// Ended badly, or crash-looping.
        Failed = "Failed",
    }
}

named_enum! {
    /// Why a pod has the health it has (when it is not `Ready` or
    /// `Succeeded`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum HealthReason {
        /// Nothing is known of the pod.
        NoStatus = "NoStatus",
        /// Its newest sandbox is not ready.
        SandboxNotReady = "SandboxNotReady",
        /// A container does not run (while others do).
        ContainerNotRunning = "ContainerNotRunning",
        /// A container is created but not started, or none exists yet.
        ContainerCreating = "ContainerCreating",
        /// A container is in a state the runtime calls unknown.
        ContainerUnknown = "ContainerUnknown",
        /// A container exited with a code other than 0.
        Error = "Error",
        /// A container exited for a reason the runtime names (`OOMKilled`…).
        RuntimeReason = "RuntimeReason",
        /// A container exited with a non-zero code N times in a row on
        /// rising attempts within the window.
        CrashLoop = "CrashLoop",
    }
}

/// A pod's phase and health, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PodHealth {
    /// The phase.
    pub phase: PodPhase,
    /// The health class.
    pub health: Health,
    /// Why, when the health is not `Ready` or `Succeeded`.
    pub reason: Option<HealthReason>,
    /// A sentence for people: which container, which code, which reason.
    pub message: Option<String>,
}

impl PodHealth {
    fn new(phase: PodPhase, health: Health) -> Self {
        PodHealth {
            phase,
            health,
            reason: None,
            message: None,
        }
    }

    /// Phase and health as someone else told them (a daemon's answer).
    pub(crate) fn from_parts(
        phase: PodPhase,
        health: Health,
        reason: Option<HealthReason>,
        message: Option<String>,
    ) -> Self {
        PodHealth {
            phase,
            health,
            reason,
            message,
        }
    }

    fn because(mut self, reason: HealthReason, message: String) -> Self {
        self.reason = Some(reason);
        self.message = Some(message);
        self
    }

    /// Derives phase and health from a status alone (no crash-loop
    /// knowledge; see [`CrashLoops::health`]).
    pub fn of(status: &PodStatus) -> Self {
        let latest = latest_attempts(&status.containers);
        let sandbox = status
            .sandboxes
            .iter()
            .max_by_key(|s| (s.created_at, s.attempt));
        let sandbox_ready = sandbox.is_some_and(|s| s.state == ContainerState::Running);
        if sandbox.is_none() && latest.is_empty() {
            return PodHealth::new(PodPhase::Unknown, Health::Unknown).because(
                HealthReason::NoStatus,
                "the runtime has no sandbox or container of this pod".into(),
            );
        }
        let count = |state| latest.iter().filter(|c| c.state == state).count();
        let running = count(ContainerState::Running);
        let exited = count(ContainerState::Exited);
        if running > 0 {
            if running == latest.len() && sandbox_ready {
                return PodHealth::new(PodPhase::Running, Health::Ready);
            }
            let not_ready = PodHealth::new(PodPhase::Running, Health::NotReady);
            if !sandbox_ready {
                return not_ready.because(
                    HealthReason::SandboxNotReady,
                    "the pod's sandbox is not ready".into(),
                );
            }
            let stopped = latest
                .iter()
                .find(|c| c.state != ContainerState::Running)
                .map_or_else(String::new, |c| describe(c));
            return not_ready.because(HealthReason::ContainerNotRunning, stopped);
        }
        if let Some(unknown) = latest.iter().find(|c| c.state == ContainerState::Unknown) {
            return PodHealth::new(PodPhase::Unknown, Health::Unknown)
                .because(HealthReason::ContainerUnknown, describe(unknown));
        }
        if exited > 0 && exited == latest.len() {
            let failed = latest
                .iter()
                .find(|c| c.exit_code.unwrap_or(0) != 0 || runtime_reason(c).is_some());
            return match failed {
                None => PodHealth::new(PodPhase::Succeeded, Health::Succeeded),
                Some(c) => {
                    let reason = if runtime_reason(c).is_some() {
                        HealthReason::RuntimeReason
                    } else {
                        HealthReason::Error
                    };
                    PodHealth::new(PodPhase::Failed, Health::Failed).because(reason, describe(c))
                }
            };
        }
        if !sandbox_ready {
            return PodHealth::new(PodPhase::Failed, Health::Failed).because(
                HealthReason::SandboxNotReady,
                "the pod's sandbox is not ready and its containers did not all run to the end"
                    .into(),
            );
        }
        let waiting = latest
            .iter()
            .find(|c| c.state == ContainerState::Created)
            .map_or_else(
                || "no container has been created yet".to_owned(),
                |c| describe(c),
            );
        PodHealth::new(PodPhase::Pending, Health::NotReady)
            .because(HealthReason::ContainerCreating, waiting)
    }
}

impl fmt::Display for PodHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.phase.as_str(), self.health.as_str())?;
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

/// A reason the runtime gave that is more than "it exited": anything but
/// `Completed` and `Error`.
fn runtime_reason(c: &Container) -> Option<&str> {
    c.reason
        .as_deref()
        .filter(|r| !r.is_empty() && *r != "Completed" && *r != "Error")
}

/// One line about a container: its name, attempt and state.
fn describe(c: &Container) -> String {
    let attempt = if c.attempt > 0 {
        format!(" (attempt {})", c.attempt)
    } else {
        String::new()
    };
    match c.state {
        ContainerState::Exited => {
            let code = c
                .exit_code
                .map_or_else(|| "an unknown code".to_owned(), |code| code.to_string());
            match c.reason.as_deref().filter(|r| !r.is_empty()) {
                Some(reason) => format!(
                    "container {}{attempt} exited with {code} ({reason})",
                    c.name
                ),
                None => format!("container {}{attempt} exited with {code}", c.name),
            }
        }
        ContainerState::Created => format!("container {}{attempt} is created, not started", c.name),
        ContainerState::Unknown => format!("container {}{attempt} is in an unknown state", c.name),
        ContainerState::Running => format!("container {}{attempt} is running", c.name),
    }
}

/// The latest attempt of each container name: the highest attempt, and on
/// a tie the newest.
pub(crate) fn latest_attempts(containers: &[Container]) -> Vec<&Container> {
    let mut latest: Vec<&Container> = Vec::new();
    for c in containers {
        match latest.iter_mut().find(|l| l.name == c.name) {
            Some(l) => {
                if (c.attempt, c.created_at) > (l.attempt, l.created_at) {
                    *l = c;
                }
            }
            None => latest.push(c),
        }
    }
    latest
}

/// How many failed exits, within which window, make a crash loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CrashLoopRule {
    /// Non-zero exits on rising attempts (at least 1; default 3).
    pub exits: usize,
    /// Within this window (default 5 minutes).
    pub window: Duration,
}

impl Default for CrashLoopRule {
    fn default() -> Self {
        CrashLoopRule {
            exits: 3,
            window: Duration::from_secs(300),
        }
    }
}

impl CrashLoopRule {
    /// `exits` failed exits (at least 1) within `window`.
    pub fn new(exits: usize, window: Duration) -> Self {
        CrashLoopRule {
            exits: exits.max(1),
            window,
        }
    }
}

/// One failed exit of a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Exit {
    attempt: u32,
    at: SystemTime,
}

/// The failed exits of every container name of every pod, fed with
/// `ContainerDied` events, to tell crash loops.
#[derive(Debug, Default)]
pub struct CrashLoops {
    rule: CrashLoopRule,
    exits: HashMap<(PodUid, String), VecDeque<Exit>>,
}

impl CrashLoops {
    /// A tracker with this rule.
    pub fn new(rule: CrashLoopRule) -> Self {
        CrashLoops {
            rule,
            exits: HashMap::new(),
        }
    }

    /// The rule.
    pub fn rule(&self) -> CrashLoopRule {
        self.rule
    }

    /// Notes an event: a `ContainerDied` of an application container with
    /// a non-zero code is a failed exit (at its runtime time, else when it
    /// was observed); a clean exit ends the run of failures; a
    /// `ContainerRemoved` of the sandbox forgets the pod.
    pub fn observe(&mut self, event: &PodLifecycleEvent) {
        let Some(container) = &event.container else {
            return;
        };
        if container.kind == EntryKind::Sandbox {
            if event.kind == EventType::ContainerRemoved {
                self.exits.retain(|(uid, _), _| uid != &event.pod.uid);
            }
            return;
        }
        if event.kind != EventType::ContainerDied {
            return;
        }
        let at = event.runtime_time.unwrap_or(event.observed_at);
        self.exit(
            &event.pod.uid,
            &container.name,
            container.attempt,
            event.exit_code,
            at,
        );
    }

    /// Notes the exits a status still shows, as if their deaths had been
    /// observed, in attempt order, at their finish times. A runtime that
    /// keeps a pod's earlier attempts (containerd does, until they are
    /// removed) shows a crash loop this way to a reader that joins late;
    /// deaths observed afterwards on the same attempts count once.
    pub fn seed(&mut self, status: &PodStatus) {
        let mut exited: Vec<&Container> = status
            .containers
            .iter()
            .filter(|c| c.state == ContainerState::Exited)
            .collect();
        exited.sort_by(|a, b| (&a.name, a.attempt).cmp(&(&b.name, b.attempt)));
        for c in exited {
            if let Some(at) = c.finished_at {
                self.exit(&status.meta.uid, &c.name, c.attempt, c.exit_code, at);
            }
        }
    }

    fn exit(&mut self, uid: &PodUid, name: &str, attempt: u32, code: Option<i32>, at: SystemTime) {
        let key = (uid.clone(), name.to_owned());
        if code.unwrap_or(0) == 0 {
            self.exits.remove(&key);
            return;
        }
        let exits = self.exits.entry(key).or_default();
        // Only rising attempts count: the same death seen twice, or an
        // older attempt reported late, is not another failure.
        if exits.back().is_some_and(|last| attempt <= last.attempt) {
            return;
        }
        exits.push_back(Exit { attempt, at });
        while exits.len() > self.rule.exits {
            exits.pop_front();
        }
    }

    /// The container of this pod that crash-loops as of `now`, if any.
    pub fn looping(&self, uid: &PodUid, now: SystemTime) -> Option<&str> {
        self.exits
            .iter()
            .filter(|((pod, _), _)| pod == uid)
            .find(|(_, exits)| self.is_loop(exits, now))
            .map(|((_, name), _)| name.as_str())
    }

    fn is_loop(&self, exits: &VecDeque<Exit>, now: SystemTime) -> bool {
        exits.len() >= self.rule.exits
            && exits.front().is_some_and(|first| {
                now.duration_since(first.at)
                    .is_ok_and(|age| age <= self.rule.window)
            })
    }

    /// Phase and health of a status, `Failed` (`CrashLoop`) when one of
    /// its containers crash-loops.
    pub fn health(&self, status: &PodStatus, now: SystemTime) -> PodHealth {
        let health = PodHealth::of(status);
        match self.looping(&status.meta.uid, now) {
            Some(name) => {
                let phase = health.phase;
                PodHealth::new(phase, Health::Failed).because(
                    HealthReason::CrashLoop,
                    format!(
                        "container {name} exited with a non-zero code {} times in a row within {}",
                        self.rule.exits,
                        crate::duration::format(self.rule.window)
                    ),
                )
            }
            None => health,
        }
    }

    /// Forgets what happened before `now` minus the window (call it now and
    /// then to bound the memory of pods that stopped failing).
    pub fn expire(&mut self, now: SystemTime) {
        let window = self.rule.window;
        self.exits.retain(|_, exits| {
            exits.back().is_some_and(|last| {
                now.duration_since(last.at)
                    .map_or(true, |age| age <= window)
            })
        });
    }
}

#[cfg(test)]
mod tests;
