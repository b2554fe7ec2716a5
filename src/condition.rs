//! Watch conditions: keyed, versioned predicates on a pod's status.
//!
//! While a pod has any condition, the generator reinspects it on every relist
//! and evaluates each condition against the fresh status. A met condition is
//! removed, unless it was set again while it was being evaluated (its version
//! moved on). One `ConditionMet` event goes out per pod per relist, however
//! many conditions were met. The conditions of a pod that vanished from the
//! runtime are purged without evaluation.
//!
//! Conditions are evaluated without any lock held, so a condition may itself
//! call [`Conditions::set`] (for example to re-arm itself). A condition that
//! captures a generator handle keeps that generator alive until the condition
//! is met or its pod vanishes.

use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::model::{Container, ContainerState, PodStatus, PodUid};

/// A predicate on a pod's latest status; `true` means met.
pub type WatchCondition = Arc<dyn Fn(&PodStatus) -> bool + Send + Sync>;

#[derive(Clone)]
struct Versioned {
    key: String,
    condition: WatchCondition,
    version: u64,
}

/// The registry of watch conditions, by pod and key.
#[derive(Default)]
pub struct Conditions {
    pods: Mutex<HashMap<PodUid, HashMap<String, Versioned>>>,
    panicked: AtomicU64,
}

impl fmt::Debug for Conditions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pods = self.pods.lock();
        let mut map = f.debug_map();
        for (uid, conditions) in pods.iter() {
            let keys: Vec<(&str, u64)> = conditions
                .values()
                .map(|v| (v.key.as_str(), v.version))
                .collect();
            map.entry(uid, &keys);
        }
        map.finish()
    }
}

impl Conditions {
    /// An empty registry.
    pub fn new() -> Self {
        Conditions::default()
    }

    /// Sets the condition under `key` for the pod. Setting a key again
    /// replaces the condition and bumps its version, starting from 0.
    pub fn set(&self, uid: &PodUid, key: &str, condition: WatchCondition) {
        let mut pods = self.pods.lock();
        let conditions = pods.entry(uid.clone()).or_default();
        match conditions.get_mut(key) {
            Some(existing) => {
                existing.version += 1;
                existing.condition = condition;
            }
            None => {
                conditions.insert(
                    key.to_string(),
                    Versioned {
                        key: key.to_string(),
                        condition,
                        version: 0,
                    },
                );
            }
        }
    }

    /// The keys and versions of a pod's conditions, sorted by key.
    pub fn versions(&self, uid: &PodUid) -> Vec<(String, u64)> {
        let pods = self.pods.lock();
        let mut out: Vec<(String, u64)> = pods
            .get(uid)
            .map(|c| c.values().map(|v| (v.key.clone(), v.version)).collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Whether the pod has an entry in the registry (possibly with no
    /// condition left after all were met).
    pub fn has_pod(&self, uid: &PodUid) -> bool {
        self.pods.lock().contains_key(uid)
    }

    /// The pods that have at least one condition.
    pub fn watched_pods(&self) -> Vec<PodUid> {
        self.pods
            .lock()
            .iter()
            .filter(|(_, c)| !c.is_empty())
            .map(|(uid, _)| uid.clone())
            .collect()
    }

    /// Whether no pod has a condition.
    pub fn is_empty(&self) -> bool {
        self.pods
            .lock()
            .values()
            .all(std::collections::HashMap::is_empty)
    }

    /// Drops the conditions of every pod for which `keep` is false, without
    /// evaluating them.
    pub(crate) fn retain_pods(&self, mut keep: impl FnMut(&PodUid) -> bool) {
        self.pods.lock().retain(|uid, _| keep(uid));
    }

    /// Evaluates the pod's conditions against `status`, removes the ones met
    /// (unless re-set meanwhile), and says whether any was met.
    pub(crate) fn evaluate(&self, uid: &PodUid, status: &PodStatus) -> bool {
        let snapshot: Vec<Versioned> = match self.pods.lock().get(uid) {
            Some(c) if !c.is_empty() => c.values().cloned().collect(),
            _ => return false,
        };
        let mut met = false;
        let mut done: Vec<&Versioned> = Vec::new();
        for versioned in &snapshot {
            // A condition is the caller's code: a panic in it must not take
            // the relist down. It is logged, counted and removed.
            match std::panic::catch_unwind(AssertUnwindSafe(|| (versioned.condition)(status))) {
                Ok(true) => {
                    met = true;
                    done.push(versioned);
                }
                Ok(false) => {}
                Err(_) => {
                    self.panicked.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(pod = ?uid.as_str(), key = %versioned.key, "watch condition panicked; removing it");
                    done.push(versioned);
                }
            }
        }
        if done.is_empty() {
            return false;
        }
        let mut pods = self.pods.lock();
        if let Some(conditions) = pods.get_mut(uid) {
            for finished in &done {
                if conditions
                    .get(&finished.key)
                    .is_some_and(|c| c.version == finished.version)
                {
                    conditions.remove(&finished.key);
                }
            }
        }
        met
    }

    /// Conditions that panicked when evaluated (each was removed).
    pub fn panicked(&self) -> u64 {
        self.panicked.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn force_version(&self, uid: &PodUid, key: &str, version: u64) {
        if let Some(c) = self.pods.lock().get_mut(uid).and_then(|c| c.get_mut(key)) {
            c.version = version;
        }
    }
}

/// A condition on one container of the pod, found by name.
///
/// It is met when that container is missing from the status or not running;
/// otherwise it is met when `condition` holds for the container's status.
pub fn running_container_condition(
    container_name: impl Into<String>,
    condition: impl Fn(&Container) -> bool + Send + Sync + 'static,
) -> WatchCondition {
    let name = container_name.into();
    Arc::new(
        move |status: &PodStatus| match status.container_by_name(&name) {
            Some(c) if c.state == ContainerState::Running => condition(c),
            _ => true,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PodMeta;

    fn status_with(containers: &[(&str, ContainerState)]) -> PodStatus {
        let mut s = PodStatus::new(Arc::new(PodMeta::new("p", "p", "ns")));
        for (name, state) in containers {
            s.containers
                .push(Container::new(format!("id-{name}"), *name, *state));
        }
        s
    }

    #[test]
    fn setting_twice_bumps_the_version() {
        let conditions = Conditions::new();
        let uid = PodUid::new("p");
        conditions.set(&uid, "k", Arc::new(|_: &PodStatus| false));
        conditions.set(&uid, "k", Arc::new(|_: &PodStatus| false));
        assert_eq!(conditions.versions(&uid), [("k".to_string(), 1)]);
    }

    #[test]
    fn running_container_condition_clears_itself_when_the_container_is_gone_or_stopped() {
        let never = running_container_condition("app", |_| false);
        assert!(never(&status_with(&[])));
        assert!(never(&status_with(&[("app", ContainerState::Exited)])));
        assert!(!never(&status_with(&[("app", ContainerState::Running)])));
        let always = running_container_condition("app", |_| true);
        assert!(always(&status_with(&[("app", ContainerState::Running)])));
    }
}
