//! The pod-status cache: the latest status of every pod the generator knows,
//! with the error of the last fetch and when it was written, plus a global
//! "fresh as of" time.
//!
//! One writer ([`PodCache`], held by the generator) and many cheap readers
//! ([`CacheReader`], handed to consumers). A reader can wait with
//! [`CacheReader::get_newer_than`] until the cache holds something newer than
//! a time it already saw, which is how a consumer that reacted to an event
//! makes sure it reads a status at least as new as that event.
//!
//! The cache never asks the runtime for anything; it only stores what it is
//! given. Timestamps are `tokio::time::Instant`s, so tests with paused time
//! control them exactly.

use std::pin::pin;
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::model::{PodMeta, PodStatus, PodUid};
use crate::runtime;

/// One pod's cached status.
#[derive(Clone, Debug)]
pub struct CacheEntry {
    /// The status. When `error` is set, this is the last status that was
    /// fetched successfully (or an empty one if none ever was).
    pub status: Arc<PodStatus>,
    /// The error of the last status fetch, if it failed.
    pub error: Option<Arc<runtime::Error>>,
    /// When the entry was written (the time the fetch started).
    pub modified: Instant,
}

impl CacheEntry {
    fn new(status: PodStatus, error: Option<Arc<runtime::Error>>, modified: Instant) -> Self {
        CacheEntry {
            status: Arc::new(status),
            error,
            modified,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    entries: DashMap<PodUid, CacheEntry>,
    global: Mutex<Option<Instant>>,
    changed: Notify,
}

/// The writing side of the cache.
#[derive(Debug, Default)]
pub struct PodCache {
    inner: Arc<Inner>,
}

/// A cheap, cloneable read-only handle on the cache.
#[derive(Clone, Debug)]
pub struct CacheReader {
    inner: Arc<Inner>,
}

impl PodCache {
    /// An empty cache.
    pub fn new() -> Self {
        PodCache::default()
    }

    /// A read-only handle.
    pub fn reader(&self) -> CacheReader {
        CacheReader {
            inner: self.inner.clone(),
        }
    }

    /// The entry of a pod.
    pub fn get(&self, uid: &PodUid) -> Option<CacheEntry> {
        get(&self.inner, uid)
    }

    /// Writes a pod's status, and the error of its fetch if it failed.
    ///
    /// Refuses (and returns `false`) when the cached entry was written at a
    /// later `timestamp`: an older observation never overwrites a newer one.
    ///
    /// A status without IPs keeps the previous IPs when none of its sandboxes
    /// is ready: a pod torn down after its network was removed still reports
    /// the IPs it had.
    pub fn set(
        &self,
        uid: &PodUid,
        mut status: PodStatus,
        error: Option<Arc<runtime::Error>>,
        timestamp: Instant,
    ) -> bool {
        match self.inner.entries.entry(uid.clone()) {
            dashmap::Entry::Occupied(mut existing) => {
                let previous = existing.get();
                if previous.modified > timestamp {
                    return false;
                }
                if status.ips.is_empty() && !status.has_ready_sandbox() {
                    status.ips = previous.status.ips.clone();
                }
                existing.insert(CacheEntry::new(status, error, timestamp));
            }
            dashmap::Entry::Vacant(slot) => {
                slot.insert(CacheEntry::new(status, error, timestamp));
            }
        }
        self.inner.changed.notify_waiters();
        true
    }

    /// Records that fetching a pod's status failed. The entry keeps the last
    /// status fetched successfully (or an empty one for `meta` if none ever
    /// was) and carries the error. Refuses (and returns `false`) when the
    /// cached entry was written at a later `timestamp`.
    pub fn set_error(
        &self,
        meta: &Arc<PodMeta>,
        error: Arc<runtime::Error>,
        timestamp: Instant,
    ) -> bool {
        match self.inner.entries.entry(meta.uid.clone()) {
            dashmap::Entry::Occupied(mut existing) => {
                let previous = existing.get_mut();
                if previous.modified > timestamp {
                    return false;
                }
                previous.error = Some(error);
                previous.modified = timestamp;
            }
            dashmap::Entry::Vacant(slot) => {
                slot.insert(CacheEntry::new(
                    PodStatus::new(meta.clone()),
                    Some(error),
                    timestamp,
                ));
            }
        }
        self.inner.changed.notify_waiters();
        true
    }

    /// Forgets a pod.
    pub fn delete(&self, uid: &PodUid) {
        if self.inner.entries.remove(uid).is_some() {
            self.inner.changed.notify_waiters();
        }
    }

    /// Declares the whole cache fresh as of `timestamp` (never moves back).
    pub fn update_time(&self, timestamp: Instant) {
        {
            let mut global = self.inner.global.lock();
            if global.is_some_and(|g| g >= timestamp) {
                return;
            }
            *global = Some(timestamp);
        }
        self.inner.changed.notify_waiters();
    }

    /// The global "fresh as of" time, once set.
    pub fn global_time(&self) -> Option<Instant> {
        *self.inner.global.lock()
    }

    /// Number of pods cached.
    pub fn len(&self) -> usize {
        self.inner.entries.len()
    }

    /// Whether no pod is cached.
    pub fn is_empty(&self) -> bool {
        self.inner.entries.is_empty()
    }
}

impl CacheReader {
    /// The entry of a pod.
    pub fn get(&self, uid: &PodUid) -> Option<CacheEntry> {
        get(&self.inner, uid)
    }

    /// Waits until the pod's entry was written after `t`, or the whole cache is
    /// fresh as of a time after `t`, then returns the entry. `None` means the
    /// pod does not exist as of that newer time.
    pub async fn get_newer_than(&self, uid: &PodUid, t: Instant) -> Option<CacheEntry> {
        loop {
            // Register interest before looking, so a write between the look and
            // the wait still wakes us.
            let mut changed = pin!(self.inner.changed.notified());
            changed.as_mut().enable();
            let entry = get(&self.inner, uid);
            if entry.as_ref().is_some_and(|e| e.modified > t) {
                return entry;
            }
            if self.global_time().is_some_and(|g| g > t) {
                return entry;
            }
            changed.await;
        }
    }

    /// The global "fresh as of" time, once set.
    pub fn global_time(&self) -> Option<Instant> {
        *self.inner.global.lock()
    }

    /// Every cached entry, in no particular order.
    pub fn entries(&self) -> Vec<CacheEntry> {
        self.inner
            .entries
            .iter()
            .map(|e| e.value().clone())
            .collect()
    }

    /// Number of pods cached.
    pub fn len(&self) -> usize {
        self.inner.entries.len()
    }

    /// Whether no pod is cached.
    pub fn is_empty(&self) -> bool {
        self.inner.entries.is_empty()
    }
}

fn get(inner: &Inner, uid: &PodUid) -> Option<CacheEntry> {
    inner.entries.get(uid).map(|e| e.value().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Container, ContainerState, PodMeta};
    use std::time::Duration;

    fn status(uid: &str, ips: &[&str], sandbox: ContainerState) -> PodStatus {
        let mut s = PodStatus::new(Arc::new(PodMeta::new(uid, uid, "ns")));
        s.ips = ips.iter().map(|s| s.to_string()).collect();
        s.sandboxes.push(Container::new("s", uid, sandbox));
        s
    }

    #[tokio::test(start_paused = true)]
    async fn set_refuses_an_older_timestamp() {
        let cache = PodCache::new();
        let uid = PodUid::new("p");
        let t = Instant::now();
        assert!(cache.set(
            &uid,
            status("p", &["10.0.0.1"], ContainerState::Running),
            None,
            t
        ));
        let older = t - Duration::from_secs(1);
        assert!(!cache.set(
            &uid,
            status("p", &["10.0.0.2"], ContainerState::Running),
            None,
            older
        ));
        assert_eq!(
            cache.get(&uid).map(|e| e.status.ips.clone()),
            Some(vec!["10.0.0.1".into()])
        );
        assert!(cache.set(
            &uid,
            status("p", &["10.0.0.3"], ContainerState::Running),
            None,
            t
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn ips_survive_a_status_without_ips_only_when_no_sandbox_is_ready() {
        let cache = PodCache::new();
        let uid = PodUid::new("p");
        let t = Instant::now();
        cache.set(
            &uid,
            status("p", &["10.0.0.1"], ContainerState::Running),
            None,
            t,
        );
        cache.set(&uid, status("p", &[], ContainerState::Exited), None, t);
        assert_eq!(
            cache.get(&uid).map(|e| e.status.ips.clone()),
            Some(vec!["10.0.0.1".into()])
        );
        cache.set(&uid, status("p", &[], ContainerState::Running), None, t);
        assert_eq!(cache.get(&uid).map(|e| e.status.ips.clone()), Some(vec![]));
    }

    #[tokio::test(start_paused = true)]
    async fn get_newer_than_is_woken_by_an_entry_write() {
        let cache = PodCache::new();
        let reader = cache.reader();
        let uid = PodUid::new("p");
        let t0 = Instant::now();
        cache.set(&uid, status("p", &[], ContainerState::Running), None, t0);
        let waiter = tokio::spawn({
            let uid = uid.clone();
            async move { reader.get_newer_than(&uid, t0).await }
        });
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        cache.set(
            &uid,
            status("p", &["10.0.0.9"], ContainerState::Running),
            None,
            Instant::now(),
        );
        let entry = waiter.await.expect("waiter task").expect("pod entry");
        assert_eq!(entry.status.ips, ["10.0.0.9"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_fetch_keeps_the_last_good_status_beside_its_error() {
        let cache = PodCache::new();
        let uid = PodUid::new("p");
        let t = Instant::now();
        let good = status("p", &["10.0.0.1"], ContainerState::Running);
        let meta = good.meta.clone();
        cache.set(&uid, good.clone(), None, t);
        let error = Arc::new(runtime::Error::Failed {
            call: "PodStatus",
            message: "boom".into(),
        });
        assert!(cache.set_error(&meta, error.clone(), t + Duration::from_secs(1)));
        let entry = cache.get(&uid).expect("cached");
        assert_eq!(*entry.status, good);
        assert!(entry.error.is_some());
        assert!(!cache.set_error(&meta, error, t), "older than the entry");
        cache.set(&uid, good, None, t + Duration::from_secs(2));
        assert!(cache.get(&uid).is_some_and(|e| e.error.is_none()));
    }

    #[tokio::test(start_paused = true)]
    async fn delete_forgets_the_pod() {
        let cache = PodCache::new();
        let uid = PodUid::new("p");
        cache.set(
            &uid,
            status("p", &[], ContainerState::Running),
            None,
            Instant::now(),
        );
        cache.delete(&uid);
        assert!(cache.get(&uid).is_none());
        assert!(cache.is_empty());
    }
}
