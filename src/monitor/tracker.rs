//! The pure half of a recovery monitor: deaths seen in events, and their
//! replacements found in the statuses the cache holds.
//!
//! Times come from the runtime wherever it gives them (a container's
//! `finished_at`, a replacement's `created_at` and `started_at`), so a
//! recovery measures the runtime's own timeline, not how soon pleg heard of
//! it. A sandbox's death has no runtime time in CRI: it is when pleg saw it.

use std::sync::Arc;
use std::time::SystemTime;

use crate::event::{EventType, PodLifecycleEvent};
use crate::hub::Filter;
use crate::model::{Container, ContainerId, ContainerState, EntryKind, PodStatus, PodUid};
use crate::phase::{PodHealth, PodPhase, latest_attempts};

use super::Recovery;

/// Where the tracker reads pod statuses (the cache, or a test's table).
pub(crate) trait View {
    /// The status of one pod.
    fn status(&self, uid: &PodUid) -> Option<Arc<PodStatus>>;
    /// Every pod of this namespace and name (old and new UIDs alike).
    fn named(&self, namespace: &str, name: &str) -> Vec<Arc<PodStatus>>;
}

impl View for crate::cache::Reader {
    fn status(&self, uid: &PodUid) -> Option<Arc<PodStatus>> {
        self.get(uid).map(|e| e.status)
    }

    fn named(&self, namespace: &str, name: &str) -> Vec<Arc<PodStatus>> {
        self.entries()
            .into_iter()
            .filter(|e| e.status.meta.namespace == namespace && e.status.meta.name == name)
            .map(|e| e.status)
            .collect()
    }
}

/// One death being followed.
#[derive(Clone, Debug)]
struct Death {
    recovery: Recovery,
    /// The attempt that died (of the container, or of the sandbox).
    attempt: u32,
    /// `died_at` is when pleg saw the death, not the runtime's time of it:
    /// the death happened then or earlier.
    seen_only: bool,
}

impl Death {
    /// Dates the death at `at` if that is earlier.
    fn earlier(&mut self, at: SystemTime, seen_only: bool) {
        let r = &mut self.recovery;
        if at < r.died_at {
            (r.died_at, self.seen_only) = (at, seen_only);
        } else if at == r.died_at {
            self.seen_only &= seen_only;
        }
    }

    fn is_pod(&self) -> bool {
        self.recovery.container.is_none()
    }

    fn pending(&self) -> bool {
        self.recovery.running_at.is_none()
    }
}

/// The deaths of a selection and what became of them.
#[derive(Debug)]
pub(crate) struct Tracker {
    selection: Filter,
    deaths: Vec<Death>,
}

impl Tracker {
    pub(crate) fn new(selection: Filter) -> Self {
        Tracker {
            selection,
            deaths: Vec::new(),
        }
    }

    /// Takes one event in; true when it concerned the selection or a
    /// replacement (the pool keeps such events).
    pub(crate) fn observe(&mut self, event: &PodLifecycleEvent, view: &impl View) -> bool {
        let selected = self.selection.matches_pod(&event.pod);
        let mut relevant = selected;
        if selected
            && event.kind == EventType::ContainerDied
            && let Some(c) = &event.container
        {
            match c.kind {
                EntryKind::Sandbox => {
                    self.pod_died(event, &c.id, c.attempt);
                    // Its replacement may be cached already (a relist
                    // can bring both in one batch, in any order).
                    for status in view.named(&event.pod.namespace, &event.pod.name) {
                        self.resolve_with(&status, event.observed_at);
                    }
                }
                EntryKind::Container => self.container_died(event, &c.id, &c.name, c.attempt),
            }
        }
        // Any event of a pod a pending death may be recovered by.
        let uid = &event.pod.uid;
        let concerned = self.deaths.iter().any(|d| {
            d.pending()
                && if d.is_pod() {
                    d.recovery.namespace == event.pod.namespace && d.recovery.name == event.pod.name
                } else {
                    &d.recovery.pod_uid == uid
                }
        });
        if concerned {
            relevant = true;
            if let Some(status) = view.status(uid) {
                self.resolve_with(&status, event.observed_at);
            }
        }
        relevant
    }

    /// Looks again at every pending death (after a final relist).
    pub(crate) fn settle(&mut self, view: &impl View, now: SystemTime) {
        let pending: Vec<(String, String, PodUid)> = self
            .deaths
            .iter()
            .filter(|d| d.pending())
            .map(|d| {
                (
                    d.recovery.namespace.clone(),
                    d.recovery.name.clone(),
                    d.recovery.pod_uid.clone(),
                )
            })
            .collect();
        for (namespace, name, uid) in pending {
            if let Some(status) = view.status(&uid) {
                self.resolve_with(&status, now);
            }
            for status in view.named(&namespace, &name) {
                self.resolve_with(&status, now);
            }
        }
    }

    fn container_died(
        &mut self,
        event: &PodLifecycleEvent,
        id: &ContainerId,
        name: &str,
        attempt: u32,
    ) {
        if self.known(id) {
            return;
        }
        let (died_at, seen_only) = death_time(event);
        // Its pod is dead already: the container is part of that death,
        // which happened when the container ended if that was earlier.
        if let Some(pod) = self
            .deaths
            .iter_mut()
            .find(|d| d.is_pod() && d.pending() && d.recovery.pod_uid == event.pod.uid)
        {
            pod.earlier(died_at, seen_only);
            return;
        }
        self.deaths.push(Death {
            recovery: Recovery::died(&event.pod, Some(name.to_owned()), id.clone(), died_at),
            attempt,
            seen_only,
        });
    }

    fn pod_died(&mut self, event: &PodLifecycleEvent, sandbox: &ContainerId, attempt: u32) {
        if self.known(sandbox) {
            return;
        }
        // The containers that died with it are part of the pod's death. A
        // sandbox's death has no runtime time (the runtime keeps none), so
        // the pod died when the first of them ended, if that was before it
        // was observed: a pod stopped, removed and run again between two
        // relists has its replacement created before its death is seen.
        let (died_at, seen_only) = death_time(event);
        let mut death = Death {
            recovery: Recovery::died(&event.pod, None, sandbox.clone(), died_at),
            attempt,
            seen_only,
        };
        self.deaths.retain(|d| {
            let with_it = !d.is_pod() && d.pending() && d.recovery.pod_uid == event.pod.uid;
            if with_it {
                death.earlier(d.recovery.died_at, d.seen_only);
            }
            !with_it
        });
        self.deaths.push(death);
    }

    fn known(&self, id: &ContainerId) -> bool {
        self.deaths.iter().any(|d| &d.recovery.dead_id == id)
    }

    /// Updates every pending death that this pod's status can recover.
    fn resolve_with(&mut self, status: &PodStatus, now: SystemTime) {
        for death in self.deaths.iter_mut().filter(|d| d.pending()) {
            if death.is_pod() {
                if death.recovery.namespace == status.meta.namespace
                    && death.recovery.name == status.meta.name
                {
                    resolve_pod(death, status, now);
                }
            } else if death.recovery.pod_uid == status.meta.uid {
                resolve_container(death, status, now);
            }
        }
    }

    /// Whether something died and all of it has recovered.
    pub(crate) fn all_recovered(&self) -> bool {
        !self.deaths.is_empty() && self.deaths.iter().all(|d| !d.pending())
    }

    /// How many deaths, how many recovered.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let recovered = self.deaths.iter().filter(|d| !d.pending()).count();
        (self.deaths.len(), recovered)
    }

    /// Every death, recovered or not.
    pub(crate) fn into_recoveries(self) -> Vec<Recovery> {
        self.deaths.into_iter().map(|d| d.recovery).collect()
    }
}

/// A later attempt of the dead container's name, in the same pod.
fn resolve_container(death: &mut Death, status: &PodStatus, now: SystemTime) {
    let Some(name) = death.recovery.container.as_deref() else {
        return;
    };
    let replacement = status
        .containers
        .iter()
        .filter(|c| {
            c.name == name
                && c.id != death.recovery.dead_id
                && (c.attempt > death.attempt
                    || c.created_at.is_some_and(|t| t > death.recovery.died_at))
        })
        .min_by_key(|c| (c.attempt, c.created_at));
    let Some(c) = replacement else {
        return;
    };
    let r = &mut death.recovery;
    r.replacement_id = Some(c.id.clone());
    r.replacement_pod_uid = Some(status.meta.uid.clone());
    r.replaced_at = Some(c.created_at.or(c.started_at).unwrap_or(now));
    if has_run(c) {
        r.running_at = c.started_at.or(r.replaced_at);
    }
}

/// When an event says the thing died, and whether that is only when pleg
/// saw it (a sandbox's death, or a container removed before its exit was
/// listed, has no runtime time).
fn death_time(event: &PodLifecycleEvent) -> (SystemTime, bool) {
    match event.finished_at.or(event.runtime_time) {
        Some(t) => (t, false),
        None => (event.observed_at, true),
    }
}

/// A sandbox other than the dead one, of a pod of the same namespace and
/// name, that replaced it; running once the pod's phase is.
///
/// A replacement is a sandbox created after the death, a later attempt of
/// the same pod's sandbox, or (when the death's time is only when pleg saw
/// it) a running sandbox of a new pod of the same name: a pod stopped,
/// removed and run again between two relists has its replacement created
/// before its death is seen, and two pods of one name do not live at once.
fn resolve_pod(death: &mut Death, status: &PodStatus, now: SystemTime) {
    let (attempt, seen_only) = (death.attempt, death.seen_only);
    let r = &mut death.recovery;
    let other_pod = status.meta.uid != r.pod_uid;
    let replacement = status
        .sandboxes
        .iter()
        .filter(|s| {
            s.id != r.dead_id
                && r.replacement_id.as_ref().is_none_or(|id| id == &s.id)
                && (s.created_at.is_none_or(|t| t >= r.died_at)
                    || (!other_pod && s.attempt > attempt)
                    || (other_pod && seen_only && s.state == ContainerState::Running))
        })
        .max_by_key(|s| s.created_at);
    let Some(sandbox) = replacement else {
        return;
    };
    r.replacement_id = Some(sandbox.id.clone());
    r.replacement_pod_uid = Some(status.meta.uid.clone());
    let created = sandbox.created_at.unwrap_or(now);
    r.replaced_at = Some(created);
    if seen_only && created < r.died_at {
        // It died before it was replaced: no later than that.
        r.died_at = created;
    }
    let newest = status
        .sandboxes
        .iter()
        .max_by_key(|s| (s.created_at, s.attempt));
    if newest.map(|s| &s.id) != Some(&sandbox.id) || sandbox.state != ContainerState::Running {
        return;
    }
    if PodHealth::of(status).phase != PodPhase::Running {
        return;
    }
    // Running since the first of its running containers started.
    r.running_at = latest_attempts(&status.containers)
        .into_iter()
        .filter(|c| c.state == ContainerState::Running)
        .filter(|c| c.created_at.is_none_or(|t| t >= created))
        .filter_map(|c| c.started_at)
        .min()
        .or(Some(created));
}

/// Whether a container reached running (it runs, or ran and exited).
fn has_run(c: &Container) -> bool {
    match c.state {
        ContainerState::Running => true,
        ContainerState::Exited => c.started_at.is_some(),
        ContainerState::Created | ContainerState::Unknown => false,
    }
}
