//! Applying a listing: the relist's half of the core.
//!
//! 1. Diff the listing against the records ([`crate::diff`]).
//! 2. Purge the watch conditions of pods that are no longer listed.
//! 3. Inspect each pod that changed, has watch conditions, failed to
//!    inspect last time, or was asked for (`request_relist`,
//!    `request_reinspect`): fetch its status, then accept it (see the
//!    module above). A pod whose status fetch fails keeps the error in the
//!    cache, publishes nothing and keeps its old record, so the same
//!    transition is found again and the pod is reinspected on every relist
//!    until a fetch succeeds.
//! 4. Declare the cache fresh as of the listing's start.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;

use super::{Core, Origin};
use crate::diff::{DiffEvent, diff_into};
use crate::model::{IdSet, Listing, Pod, PodUid};

/// What one relist did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelistSummary {
    /// Pods listed.
    pub pods: usize,
    /// Pods inspected (status fetched or removed from the cache).
    pub inspected: usize,
    /// Pods whose status fetch failed.
    pub failed: usize,
    /// Events published (before subscriber filters).
    pub events: usize,
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
        self.listed_at = Some(listed_at);
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
            ..RelistSummary::default()
        };
        let mut failed: HashSet<PodUid> = HashSet::new();
        for change in diff.changes() {
            let events = diff.events_of(change);
            let outcome = match &change.new {
                Some(new) => {
                    self.inspect(new, change.old.as_ref(), events, listed_at, asked)
                        .await
                }
                None => Some(self.forget(&change.uid, change.old.as_ref(), events, Origin::Relist)),
            };
            if outcome.is_some() {
                self.tombstones.bury(events);
            }
            summary.record(outcome, &mut failed, &change.uid);
        }

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
        for uid in extra {
            if changed.contains(&uid) {
                continue;
            }
            let outcome = match listing.get(&uid) {
                Some(pod) => {
                    let old = self.records.get(&uid).cloned();
                    self.inspect(pod, old.as_ref(), &[], listed_at, asked).await
                }
                None if self.cache.get(&uid).is_some() => {
                    Some(self.forget(&uid, None, &[], Origin::Relist))
                }
                None => continue,
            };
            summary.record(outcome, &mut failed, &uid);
        }
        drop(changed);
        self.diff = diff;
        self.reinspect = failed;
        self.cache.update_time(started);
        summary
    }

    /// Fetches a listed pod's status and, if that works, accepts its record
    /// and publishes its events. Returns the number of events published, or
    /// `None` when the fetch failed. The inspection of a pod that was asked
    /// for is a per-pod relist, and timed as one.
    async fn inspect(
        &mut self,
        pod: &Arc<Pod>,
        old: Option<&Arc<Pod>>,
        events: &[DiffEvent],
        listed_at: SystemTime,
        asked: &[Asked],
    ) -> Option<usize> {
        let uid = pod.uid();
        let fetched_at = Instant::now();
        let outcome = self.fetch_and_accept(pod, old, events, listed_at).await;
        if asked.iter().any(|a| &a.uid == uid) {
            self.metrics
                .pod_relist_duration
                .observe(fetched_at.elapsed());
        }
        outcome
    }

    async fn fetch_and_accept(
        &mut self,
        pod: &Arc<Pod>,
        old: Option<&Arc<Pod>>,
        events: &[DiffEvent],
        listed_at: SystemTime,
    ) -> Option<usize> {
        let uid = pod.uid();
        let fetched_at = Instant::now();
        let fetched = self.runtime.pod_status(pod).await;
        let mut status = match fetched {
            Ok(status) => status,
            Err(e) => {
                self.metrics.status_failures.inc();
                tracing::warn!(
                    pod = ?uid.as_str(), namespace = ?pod.meta.namespace, name = ?pod.meta.name, error = ?e.to_string(),
                    "relist: unable to get pod status; holding its events back until a fetch succeeds"
                );
                self.fetch_failed(&pod.meta, e, fetched_at);
                return None;
            }
        };
        // The status is at least as fresh as the listing it was fetched for.
        status.timestamp = status.timestamp.or(Some(listed_at));
        let sync = self.sync_owed.remove(uid);
        Some(self.accept(pod, old, events, status, fetched_at, Origin::Relist, sync))
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
