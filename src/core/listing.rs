//! Applying a listing: the relist's half of the core.
//!
//! 1. Diff the listing against the records ([`crate::diff`]).
//! 2. Purge the watch conditions of pods that are no longer listed.
//! 3. Inspect each pod that changed, has watch conditions, failed to
//!    inspect last time, or was asked for (`request_relist`,
//!    `request_reinspect`): fetch its status, then accept it (see the
//!    module above). Up to [`STATUS_FETCHES_IN_FLIGHT`] fetches run side
//!    by side; pods are accepted in listing order as their statuses arrive. A pod whose status fetch fails keeps the error in the
//!    cache, publishes nothing and keeps its old record, so the same
//!    transition is found again and the pod is reinspected on every relist
//!    until a fetch succeeds.
//! 4. Declare the cache fresh as of the listing's start.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::StreamExt as _;
use tokio::time::Instant;

use super::{Core, Origin};
use crate::diff::{DiffEvent, diff_into};
use crate::model::{IdSet, Listing, Pod, PodUid};

/// Pod status fetches a relist keeps in flight at once. containerd answers
/// them side by side; one after another, a relist that saw 20 pods change
/// under load spent hundreds of milliseconds before the last pod's events
/// went out.
pub(crate) const STATUS_FETCHES_IN_FLIGHT: usize = 8;

/// One pod's status fetch: the answer, when it was asked, and how long it
/// took.
pub(crate) struct Fetched {
    result: crate::runtime::Result<crate::model::PodStatus>,
    at: Instant,
    took: std::time::Duration,
}

/// What one relist did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelistSummary {
    /// Pods listed.
    pub pods: usize,
    /// Containers listed (sandboxes not included).
    pub containers: usize,
    /// Pods inspected (status fetched or removed from the cache).
    pub inspected: usize,
    /// Pods whose status fetch failed.
    pub failed: usize,
    /// Events published (before subscriber filters).
    pub events: usize,
}

/// A pod whose status fetch fails: its events are held back until a fetch
/// succeeds, so health names it ([`crate::Pleg::failing_pods`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailingPod {
    /// The pod.
    pub meta: Arc<crate::model::PodMeta>,
    /// Since when its fetches fail (the first failure in a row).
    pub since: Instant,
    /// Failed fetches in a row.
    pub failures: u64,
    /// The last error.
    pub error: String,
}

/// A pod asked for by hand, and whether it is owed a `PodSync`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Asked {
    pub(crate) uid: PodUid,
    pub(crate) sync: bool,
}

impl Core {
    /// Applies a successful listing that started at `started` (wall clock
    /// `listed_at`). `asked` are the pods inspected on request, whatever
    /// the diff says.
    pub(crate) async fn apply_listing(
        &mut self,
        listing: Listing,
        started: Instant,
        listed_at: SystemTime,
        asked: &[Asked],
    ) -> RelistSummary {
        self.count_duplicates(&listing);
        self.watch_the_clock();
        self.listed_at = Some(listed_at);
        self.first_listed_at.get_or_insert(listed_at);
        // The diff's buffers are taken out for the relist and put back, so
        // that they keep their capacity.
        let mut diff = std::mem::take(&mut self.diff);
        diff_into(&self.records, &listing, &mut diff);
        self.set_counts(diff.counts());
        self.conditions.retain_pods(|uid| listing.contains(uid));
        self.sync_owed.retain(|uid| listing.contains(uid));
        for a in asked.iter().filter(|a| a.sync) {
            if listing.contains(&a.uid) {
                self.sync_owed.insert(a.uid.clone());
            }
        }

        let mut summary = RelistSummary {
            pods: listing.len(),
            containers: diff.counts().all_containers(),
            ..RelistSummary::default()
        };
        let mut failed: HashSet<PodUid> = HashSet::new();
        // The statuses of the changed pods are fetched side by side, and
        // accepted (published) in listing order as they come in.
        let mut fetched = self.fetches(
            diff.changes()
                .iter()
                .filter_map(|c| c.new.clone())
                .collect(),
        );
        for change in diff.changes() {
            let events = diff.events_of(change);
            let outcome = if let Some(new) = &change.new {
                let Some(status) = fetched.next().await else {
                    // One fetch is made per changed pod that is listed.
                    continue;
                };
                self.accept_fetched(new, change.old.as_ref(), events, listed_at, asked, status)
            } else {
                if let Some(old) = &change.old {
                    self.forget_times(old);
                }
                Some(self.forget(&change.uid, change.old.as_ref(), events, Origin::Relist))
            };
            if outcome.is_some() {
                // An ID listed again is alive after all (a listing that
                // left it out by mistake made it look removed): events
                // about it count again.
                self.tombstones.exhume(events);
                self.tombstones.bury(events);
            }
            summary.record(outcome, &mut failed, &change.uid);
        }
        drop(fetched);

        // Pods with no change of their own that still need a look. The
        // reinspection set is only replaced once the relist completes: a
        // relist cancelled half-way (stop, or a dropped `relist()` future)
        // leaves it for the next one.
        let mut extra: Vec<PodUid> = self.conditions.watched_pods();
        extra.extend(self.reinspect.iter().cloned());
        extra.extend(asked.iter().map(|a| a.uid.clone()));
        extra.sort_unstable();
        extra.dedup();
        let changed: IdSet<&PodUid> = if extra.is_empty() {
            IdSet::default()
        } else {
            diff.changes().iter().map(|c| &c.uid).collect()
        };
        extra.retain(|uid| !changed.contains(uid));
        drop(changed);
        let listed: Vec<Arc<Pod>> = extra
            .iter()
            .filter_map(|uid| listing.get(uid).cloned())
            .collect();
        let mut fetched = self.fetches(listed);
        for uid in extra {
            let outcome = match listing.get(&uid) {
                Some(pod) => {
                    let Some(status) = fetched.next().await else {
                        continue;
                    };
                    let old = self.records.get(&uid).cloned();
                    self.accept_fetched(pod, old.as_ref(), &[], listed_at, asked, status)
                }
                None if self.cache.get(&uid).is_some() => {
                    Some(self.forget(&uid, None, &[], Origin::Relist))
                }
                None => continue,
            };
            summary.record(outcome, &mut failed, &uid);
        }
        drop(fetched);
        diff.trim();
        self.diff = diff;
        self.note_failing(&failed, started);
        self.reinspect = failed;
        self.cache.update_time(started);
        summary
    }

    /// The status fetches of `pods`, [`STATUS_FETCHES_IN_FLIGHT`] at a
    /// time, in order. They hold the runtime, not the core, so the core
    /// accepts one pod while the next ones are fetched.
    fn fetches(
        &self,
        pods: Vec<Arc<Pod>>,
    ) -> impl futures_util::Stream<Item = Fetched> + Unpin + use<> {
        let runtime = self.runtime.clone();
        Box::pin(
            futures_util::stream::iter(pods.into_iter().map(move |pod| {
                let runtime = runtime.clone();
                async move {
                    let at = Instant::now();
                    let result = runtime.pod_status(&pod).await;
                    Fetched {
                        result,
                        at,
                        took: at.elapsed(),
                    }
                }
            }))
            .buffered(STATUS_FETCHES_IN_FLIGHT),
        )
    }

    /// A listed pod's fetched status: on success its record is accepted
    /// and its events published; returns the number published, or `None`
    /// when the fetch failed. The inspection of a pod that was asked for is
    /// a per-pod relist, and timed as one.
    fn accept_fetched(
        &mut self,
        pod: &Arc<Pod>,
        old: Option<&Arc<Pod>>,
        events: &[DiffEvent],
        listed_at: SystemTime,
        asked: &[Asked],
        fetched: Fetched,
    ) -> Option<usize> {
        let uid = pod.uid();
        if asked.iter().any(|a| &a.uid == uid) {
            self.metrics.pod_relist_duration.observe(fetched.took);
        }
        let mut status = match fetched.result {
            Ok(status) => status,
            Err(e) => {
                self.metrics.status_failures.inc();
                tracing::warn!(
                    pod = ?uid.as_str(), namespace = ?pod.meta.namespace, name = ?pod.meta.name, error = ?e.to_string(),
                    "relist: unable to get pod status; holding its events back until a fetch succeeds"
                );
                self.last_fetch_errors
                    .insert(uid.clone(), (pod.meta.clone(), e.to_string()));
                self.fetch_failed(&pod.meta, e, fetched.at);
                return None;
            }
        };
        // The status is at least as fresh as the listing it was fetched for.
        status.timestamp = status.timestamp.or(Some(listed_at));
        let sync = self.sync_owed.remove(uid);
        let events = rebuild_missed_starts(events, old, &status, self.first_listed_at);
        Some(self.accept(pod, old, &events, status, fetched.at, Origin::Relist, sync))
    }

    /// Keeps the pods whose fetch failed at this relist, with since when,
    /// for health and the gauge.
    fn note_failing(&mut self, failed: &HashSet<PodUid>, at: Instant) {
        // The common case, nothing failing before or now, costs nothing.
        if failed.is_empty() && self.failing.is_empty() {
            return;
        }
        let errors = std::mem::take(&mut self.last_fetch_errors);
        let mut previous = std::mem::take(&mut self.failing);
        for uid in failed {
            let Some((meta, error)) = errors.get(uid) else {
                continue;
            };
            let entry = match previous.remove(uid) {
                Some(mut was) => {
                    was.failures += 1;
                    was.error.clone_from(error);
                    was.meta = meta.clone();
                    was
                }
                None => FailingPod {
                    meta: meta.clone(),
                    since: at,
                    failures: 1,
                    error: error.clone(),
                },
            };
            self.failing.insert(uid.clone(), entry);
        }
        self.metrics
            .pods_status_failing
            .set(super::gauge(self.failing.len()));
        let mut snapshot: Vec<FailingPod> = self.failing.values().cloned().collect();
        snapshot.sort_by_key(|p| p.since);
        *self.failing_pods.lock() = snapshot;
    }

    /// Counts repeated pod UIDs and IDs folded away from a listing, warning
    /// when it starts rather than on every relist while it lasts.
    fn count_duplicates(&mut self, listing: &Listing) {
        let duplicates = listing.duplicates_dropped();
        if duplicates > 0 {
            self.metrics
                .duplicates_dropped
                .inc_by(u64::try_from(duplicates).unwrap_or(u64::MAX));
            if !std::mem::replace(&mut self.duplicates_seen, true) {
                tracing::warn!(
                    duplicates,
                    "relist: runtime listed some pods or containers more than once; kept the first sighting"
                );
            }
        } else {
            self.duplicates_seen = false;
        }
    }
}

/// A container first seen exited (or seen created, then exited), that
/// started after pleg began watching, had a start nobody reported (it lived between two relists, or its
/// events went to another consumer of the stream, or were lost in a runtime
/// restart): its status says when it started, so the start is published
/// before its death rather than lost. (The kubelet reports only the death.)
/// Containers that finished before pleg's first listing keep the kubelet's
/// single `ContainerDied`.
pub(crate) fn rebuild_missed_starts<'a>(
    events: &'a [DiffEvent],
    old: Option<&Arc<Pod>>,
    status: &crate::model::PodStatus,
    watching_since: Option<SystemTime>,
) -> std::borrow::Cow<'a, [DiffEvent]> {
    use crate::event::EventType;
    use crate::model::EntryKind;
    let Some(since) = watching_since else {
        return std::borrow::Cow::Borrowed(events);
    };
    // Created is the one state a container is in before it runs (CRI's
    // created → running → exited), so a record of it created means no
    // start was reported; a record of it unknown may follow a reported
    // start, and is left alone.
    let never_seen_running = |id: &crate::model::ContainerId| {
        old.and_then(|p| p.find(id))
            .is_none_or(|(c, _)| c.state == crate::model::ContainerState::Created)
    };
    let missed = |e: &DiffEvent| {
        e.kind == EventType::ContainerDied
            && e.entry == EntryKind::Container
            && never_seen_running(&e.id)
            && status
                .find(&e.id)
                .and_then(|c| c.started_at)
                .is_some_and(|started| started >= since)
    };
    if !events.iter().any(missed) {
        return std::borrow::Cow::Borrowed(events);
    }
    let mut rebuilt = Vec::with_capacity(events.len() + 1);
    for e in events {
        if missed(e) {
            rebuilt.push(DiffEvent {
                kind: EventType::ContainerStarted,
                id: e.id.clone(),
                entry: e.entry,
            });
        }
        rebuilt.push(e.clone());
    }
    std::borrow::Cow::Owned(rebuilt)
}

impl RelistSummary {
    fn record(&mut self, outcome: Option<usize>, failed: &mut HashSet<PodUid>, uid: &PodUid) {
        self.inspected += 1;
        if let Some(events) = outcome {
            self.events += events;
        } else {
            self.failed += 1;
            failed.insert(uid.clone());
        }
    }
}
