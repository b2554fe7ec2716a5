//! Waiting for a pod to reach a condition: the node's answer to "wait for
//! this pod to leave Pending", "wait until container X runs", "wait until it
//! is gone".
//!
//! [`Pleg::wait_for`] subscribes first and reads the cache second, so a
//! change between the two is never missed: it is either in the cache read,
//! or queued for the subscription (the core writes the cache before it
//! publishes). Each event of a selected pod, and each `Resync`, makes it
//! look again. When the timeout is near it re-reads the runtime once (a
//! relist), so that a condition that became true just before the deadline
//! but was not relisted yet is not reported as a timeout.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::Pleg;
use crate::hub::{Filter, SubscribeOptions};
use crate::model::{ContainerState, PodStatus};
use crate::phase::{PodHealth, PodPhase};
use crate::select::{Pattern, PodSelector};

/// What to wait for, of the pods a [`Filter`] selects.
#[derive(Clone)]
#[non_exhaustive]
pub enum Until {
    /// A selected pod is in none of these phases, or no selected pod is
    /// left (nublado's `wait_for_phase(until_not=…)`). Gives the new phase,
    /// or none when the pod is gone.
    NotIn(HashSet<PodPhase>),
    /// A selected pod's container of this name (its latest attempt) runs.
    Running(String),
    /// A selected pod has containers, and every one (its latest attempt)
    /// has exited.
    AllExited,
    /// No selected pod is left.
    Gone,
    /// A selected pod's status satisfies this.
    Matches(Arc<dyn Fn(&PodStatus) -> bool + Send + Sync>),
}

impl fmt::Debug for Until {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Until::NotIn(phases) => {
                let mut names: Vec<&str> = phases.iter().map(|p| p.as_str()).collect();
                names.sort_unstable();
                write!(f, "NotIn({})", names.join(","))
            }
            Until::Running(name) => write!(f, "Running({name})"),
            Until::AllExited => f.write_str("AllExited"),
            Until::Gone => f.write_str("Gone"),
            Until::Matches(_) => f.write_str("Matches(..)"),
        }
    }
}

impl Until {
    /// Until the pod leaves these phases (or is gone).
    pub fn not_in(phases: impl IntoIterator<Item = PodPhase>) -> Self {
        Until::NotIn(phases.into_iter().collect())
    }

    /// Until this container runs.
    pub fn running(container: impl Into<String>) -> Self {
        Until::Running(container.into())
    }

    /// Whether `status` (a selected pod) meets it.
    fn met_by(&self, status: &PodStatus) -> bool {
        let latest = || crate::phase::latest_attempts(&status.containers);
        match self {
            Until::NotIn(phases) => !phases.contains(&PodHealth::of(status).phase),
            Until::Running(name) => latest()
                .iter()
                .any(|c| &c.name == name && c.state == ContainerState::Running),
            Until::AllExited => {
                let latest = latest();
                !latest.is_empty() && latest.iter().all(|c| c.state == ContainerState::Exited)
            }
            Until::Gone => false,
            Until::Matches(f) => f(status),
        }
    }

    /// Whether having no selected pod meets it.
    fn met_by_absence(&self) -> bool {
        matches!(self, Until::NotIn(_) | Until::Gone)
    }

    /// Checks the selected pods' statuses once: `Ok` with what met it, or
    /// `Err` with the last status looked at (none when no pod was
    /// selected). A client of the daemon checks what it listed this way.
    ///
    /// # Errors
    /// Not met: the last status looked at, if any.
    pub fn check(
        &self,
        selected: impl IntoIterator<Item = Arc<PodStatus>>,
    ) -> Result<Met, Option<Arc<PodStatus>>> {
        let mut last = None;
        for status in selected {
            if self.met_by(&status) {
                let phase = PodHealth::of(&status).phase;
                return Ok(Met {
                    status: Some(status),
                    phase: Some(phase),
                });
            }
            last = Some(status);
        }
        if last.is_none() && self.met_by_absence() {
            return Ok(Met {
                status: None,
                phase: None,
            });
        }
        Err(last)
    }
}

/// A wait that was met.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Met {
    /// The status that met it (`None`: met because no pod is left).
    pub status: Option<Arc<PodStatus>>,
    /// That status's phase.
    pub phase: Option<PodPhase>,
}

/// A wait that was not met.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum WaitError {
    /// The timeout passed (after one last look at the runtime).
    TimedOut {
        /// How long it waited.
        waited: Duration,
        /// What it waited for.
        until: String,
        /// The last status of a selected pod, if any.
        last: Option<Arc<PodStatus>>,
    },
    /// The generator shut down.
    Closed,
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitError::TimedOut {
                waited,
                until,
                last,
            } => {
                write!(
                    f,
                    "not met within {}: waited for {until}",
                    crate::duration::format(*waited)
                )?;
                match last {
                    Some(s) => write!(
                        f,
                        "; {}/{} is {}",
                        s.meta.namespace,
                        s.meta.name,
                        PodHealth::of(s)
                    ),
                    None => f.write_str("; no selected pod"),
                }
            }
            WaitError::Closed => f.write_str("the generator shut down while waiting"),
        }
    }
}

impl std::error::Error for WaitError {}

impl PodSelector {
    /// The pod of exactly this name (any namespace; add one with
    /// [`Filter::with_namespace`]).
    ///
    /// # Errors
    /// [`crate::select::SelectorError`] for a name too long to compile.
    pub fn named(name: &str) -> Result<Self, crate::select::SelectorError> {
        Ok(
            PodSelector::everything()
                .with_name_pattern(Pattern::new("name", &regex::escape(name))?),
        )
    }
}

/// Outcome of looking at the cache once.
enum Look {
    Met(Met),
    Not(Option<Arc<PodStatus>>),
}

impl Pleg {
    /// Waits until a pod that `filter` selects meets `until`, for at most
    /// `timeout` (see the module).
    ///
    /// # Errors
    /// [`WaitError::TimedOut`] with the last status seen;
    /// [`WaitError::Closed`] when the generator stops.
    pub async fn wait_for(
        &self,
        filter: &Filter,
        until: Until,
        timeout: Duration,
    ) -> Result<Met, WaitError> {
        // Every event kind of the selected pods: the filter's kinds would
        // hide the changes the condition is about.
        let mut watching = filter.clone();
        watching.kinds = None;
        watching.include_container_changed = true;
        let mut sub = self
            .subscribe_with(SubscribeOptions::filtered(watching).with_capacity(64))
            .map_err(|_| WaitError::Closed)?;
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        let mut last = match self.look(filter, &until) {
            Look::Met(met) => return Ok(met),
            Look::Not(last) => last,
        };
        loop {
            tokio::select! {
                delivery = sub.recv() => match delivery {
                    Some(_) => {
                        match self.look(filter, &until) {
                            Look::Met(met) => return Ok(met),
                            Look::Not(seen) => last = seen.or(last),
                        }
                    }
                    None => return Err(WaitError::Closed),
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        // One last look at the runtime itself before giving up.
        let _ = self.relist().await;
        match self.look(filter, &until) {
            Look::Met(met) => Ok(met),
            Look::Not(seen) => Err(WaitError::TimedOut {
                waited: started.elapsed(),
                until: format!("{until:?}"),
                last: seen.or(last),
            }),
        }
    }

    /// Looks at every cached pod the filter selects.
    fn look(&self, filter: &Filter, until: &Until) -> Look {
        let selected = self
            .cache()
            .entries()
            .into_iter()
            .filter(|e| filter.matches_pod(&e.status.meta))
            .map(|e| e.status);
        match until.check(selected) {
            Ok(met) => Look::Met(met),
            Err(last) => Look::Not(last),
        }
    }

    /// Whether a pod of this name and namespace is running (drunc's
    /// `is_alive`): its phase, from the cache, is `Running`.
    pub fn is_alive(&self, name: &str, namespace: &str) -> bool {
        self.cache().entries().iter().any(|e| {
            e.status.meta.name == name
                && e.status.meta.namespace == namespace
                && PodHealth::of(&e.status).phase == PodPhase::Running
        })
    }
}

#[cfg(test)]
mod tests;
