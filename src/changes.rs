//! Following pods: one pod's events until a timeout, a namespace's changes,
//! and deleting a pod once it has completed (nublado's `events_for_pod`,
//! `watch_pod_changes` and `delete_after_completion`).
//!
//! Each is a hub subscription taken before anything is read, so nothing
//! that happens after the call is missed, and losses still arrive as
//! [`Delivery::Resync`].

use std::collections::HashSet;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::Pleg;
use crate::event::{EventType, PodLifecycleEvent};
use crate::hub::{Delivery, Filter, Subscription};
use crate::model::{ContainerId, PodStatus, PodUid};
use crate::phase::PodHealth;
use crate::runtime::PodControl;
use crate::wait::{Until, WaitError};

/// The events of the selected pods until a timeout: a stream that ends
/// quietly then (see [`Pleg::pod_events`]).
pub struct PodEvents {
    subscription: Subscription,
    deadline: Pin<Box<tokio::time::Sleep>>,
    ended: bool,
}

impl fmt::Debug for PodEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodEvents")
            .field("deadline", &self.deadline.deadline())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl PodEvents {
    /// The next delivery; `None` at the timeout or when the generator stops.
    pub async fn next(&mut self) -> Option<Delivery> {
        std::future::poll_fn(|cx| self.poll_delivery(cx)).await
    }

    fn poll_delivery(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        if self.ended {
            return Poll::Ready(None);
        }
        // What has already happened is delivered before the timeout ends it.
        if let Poll::Ready(d) = self.subscription.poll_recv(cx) {
            self.ended = d.is_none();
            return Poll::Ready(d);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.ended = true;
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

impl futures_core::Stream for PodEvents {
    type Item = Delivery;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.get_mut().poll_delivery(cx)
    }
}

/// A change to a pod that existed before it and exists after it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PodChange {
    /// What happened.
    pub event: Arc<PodLifecycleEvent>,
    /// The pod's status as cached when the change was taken (`None` if it
    /// is gone again since).
    pub status: Option<Arc<PodStatus>>,
    /// Its phase and health, from that status.
    pub health: Option<PodHealth>,
}

/// What [`PodChanges::next`] yields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum PodChangeUpdate {
    /// A pod changed.
    Change(PodChange),
    /// Changes were lost (see [`Delivery::Resync`]); re-read the cache.
    Resync {
        /// How many events were lost.
        missed: u64,
    },
}

/// A namespace's pod changes, without the creations and deletions (see
/// [`Pleg::watch_pod_changes`]).
pub struct PodChanges {
    pleg: Pleg,
    subscription: Subscription,
    known: HashSet<PodUid>,
}

impl fmt::Debug for PodChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodChanges")
            .field("known", &self.known.len())
            .finish_non_exhaustive()
    }
}

impl PodChanges {
    /// The next change; `None` when the generator stops.
    pub async fn next(&mut self) -> Option<PodChangeUpdate> {
        loop {
            match self.subscription.recv().await? {
                Delivery::Event(event) => {
                    if let Some(change) = self.change(event) {
                        return Some(PodChangeUpdate::Change(change));
                    }
                }
                Delivery::Resync { missed, .. } => {
                    return Some(PodChangeUpdate::Resync { missed });
                }
                // Never asked for here.
                Delivery::Initial(_) | Delivery::Synced(_) => {}
            }
        }
    }

    /// `None` for a creation (the first event of a pod not known before)
    /// or a deletion (a removal after which no sandbox of the pod is left).
    fn change(&mut self, event: Arc<PodLifecycleEvent>) -> Option<PodChange> {
        let uid = &event.pod.uid;
        let status = self.pleg.cache().get(uid).map(|e| e.status);
        // A removal that leaves nothing of the pod is part of its deletion.
        let gone = event.kind == EventType::ContainerRemoved
            && status.as_ref().is_none_or(|s| s.sandboxes.is_empty());
        if gone {
            self.known.remove(uid);
            return None;
        }
        if self.known.insert(uid.clone()) {
            return None;
        }
        let health = status.as_deref().map(PodHealth::of);
        Some(PodChange {
            event,
            status,
            health,
        })
    }
}

/// The pods [`Pleg::delete_after_completion`] deleted.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Deleted {
    /// Each pod's status when it completed.
    pub completed: Vec<Arc<PodStatus>>,
    /// The sandboxes stopped and removed.
    pub sandboxes: Vec<ContainerId>,
}

/// Why [`Pleg::delete_after_completion`] deleted nothing, or not all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeleteError {
    /// The pods did not complete in time (or the generator stopped).
    #[error(transparent)]
    Wait(#[from] WaitError),
    /// The runtime refused to stop or remove a sandbox.
    #[error("deleting pod {pod}: {source}")]
    Runtime {
        /// `namespace/name`.
        pod: String,
        /// The runtime's error.
        #[source]
        source: crate::runtime::Error,
    },
}

impl Pleg {
    /// The events of the pods `filter` selects, from now until `timeout`;
    /// the stream then ends quietly.
    pub fn pod_events(&self, filter: &Filter, timeout: Duration) -> PodEvents {
        PodEvents {
            subscription: self.subscribe_filtered(filter.clone()),
            deadline: Box::pin(tokio::time::sleep(timeout)),
            ended: false,
        }
    }

    /// The changes to pods of `namespace`: every event of a pod that
    /// existed before it and still exists after it. A pod's creation (its
    /// first event, as a Kubernetes watch's `ADDED`) and its deletion (the
    /// removals after which nothing of it is left) are left out.
    pub fn watch_pod_changes(&self, namespace: &str) -> PodChanges {
        let filter = Filter::all()
            .with_namespace(namespace)
            .with_container_changed(true);
        // Subscribe before reading which pods exist, so none is missed.
        let subscription = self.subscribe_filtered(filter.clone());
        let known = self
            .cache()
            .entries()
            .into_iter()
            .filter(|e| filter.matches_pod(&e.status.meta))
            .map(|e| e.status.meta.uid.clone())
            .collect();
        PodChanges {
            pleg: self.clone(),
            subscription,
            known,
        }
    }

    /// Waits until every container of a pod `filter` selects has exited
    /// (for at most `timeout`), then stops and removes that pod's sandboxes
    /// through `control` (normally the same runtime the generator watches).
    ///
    /// # Errors
    /// [`DeleteError::Wait`] when no selected pod completed in time;
    /// [`DeleteError::Runtime`] when the runtime refused a stop or removal.
    pub async fn delete_after_completion(
        &self,
        control: &dyn PodControl,
        filter: &Filter,
        timeout: Duration,
    ) -> Result<Deleted, DeleteError> {
        let met = self.wait_for(filter, Until::AllExited, timeout).await?;
        let mut deleted = Deleted {
            completed: Vec::new(),
            sandboxes: Vec::new(),
        };
        let Some(status) = met.status else {
            return Ok(deleted);
        };
        let pod = format!("{}/{}", status.meta.namespace, status.meta.name);
        for sandbox in &status.sandboxes {
            let failed = |source| DeleteError::Runtime {
                pod: pod.clone(),
                source,
            };
            control.stop_pod(&sandbox.id).await.map_err(failed)?;
            control.remove_pod(&sandbox.id).await.map_err(failed)?;
            deleted.sandboxes.push(sandbox.id.clone());
        }
        deleted.completed.push(status);
        // Let the cache and subscribers learn of it now.
        self.request_relist(&deleted.completed[0].meta.uid);
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests;
