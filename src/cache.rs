//! The pod-status cache: the latest status of every pod the generator knows,
//! with the error of the last fetch, when it was written, and the last event
//! pleg published about each of the pod's containers and sandboxes; plus a
//! global "fresh as of" time.
//!
//! # Writer and readers
//! The cache is split like kube-runtime's reflector store. There is one
//! [`Writer`], owned by the generator's core: it is not `Clone`, every write
//! takes `&mut self`, and it stores exactly what it is given (deciding what
//! to store, such as keeping a pod's IPs after its network went away, is the
//! core's business). Everything else holds [`Reader`]s: cheap clones that
//! see exactly what was stored, one whole entry at a time.
//!
//! A reader can wait with [`Reader::get_newer_than`] until the cache holds
//! something newer than a time it already saw, which is how a consumer that
//! reacted to an event makes sure it reads a status at least as new as that
//! event.
//!
//! # What it must never do
//! Ask the runtime for anything, or change an entry it was given. Timestamps
//! are `tokio::time::Instant`s, so tests with paused time control them
//! exactly.

use std::pin::pin;
use std::sync::Arc;
use std::time::SystemTime;

use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::event::{EventSource, EventType};
use crate::model::{ContainerId, PodStatus, PodUid};
use crate::runtime;

/// The last event published about a container or sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastEvent {
    /// The container or sandbox.
    pub id: ContainerId,
    /// What happened.
    pub kind: EventType,
    /// When pleg published it.
    pub at: SystemTime,
    /// Where it was seen.
    pub source: EventSource,
}

/// One pod's cached state, written whole.
#[derive(Clone, Debug)]
pub struct CacheEntry {
    /// The status. When `error` is set, this is the last status that was
    /// fetched successfully (or an empty one if none ever was).
    pub status: Arc<PodStatus>,
    /// The error of the last status fetch, if it failed.
    pub error: Option<Arc<runtime::Error>>,
    /// When the entry was written (the time the fetch started).
    pub modified: Instant,
    /// The last event of each container and sandbox of the pod that pleg
    /// published, in ID order; it includes entries no longer in `status` (a
    /// removed container), and is bounded (the oldest removed ones go
    /// first).
    pub last_events: Arc<[LastEvent]>,
}

impl CacheEntry {
    /// The last event about this container or sandbox, if pleg published
    /// one.
    pub fn last_event(&self, id: &ContainerId) -> Option<&LastEvent> {
        self.last_events
            .binary_search_by(|e| e.id.cmp(id))
            .ok()
            .and_then(|i| self.last_events.get(i))
    }
}

#[derive(Debug, Default)]
struct Shared {
    entries: DashMap<PodUid, CacheEntry>,
    global: Mutex<Option<Instant>>,
    changed: Notify,
}

/// The writing side of the cache. There is one; it is not `Clone`.
#[derive(Debug, Default)]
pub struct Writer {
    shared: Arc<Shared>,
}

/// A cheap, cloneable read-only handle on the cache.
#[derive(Clone, Debug)]
pub struct Reader {
    shared: Arc<Shared>,
}

impl Writer {
    /// An empty cache.
    pub fn new() -> Self {
        Writer::default()
    }

    /// A read-only handle.
    pub fn reader(&self) -> Reader {
        Reader {
            shared: self.shared.clone(),
        }
    }

    /// The entry of a pod, as last written.
    pub fn get(&self, uid: &PodUid) -> Option<CacheEntry> {
        get(&self.shared, uid)
    }

    /// Stores a pod's entry as given.
    ///
    /// Refuses (and returns `false`) when the stored entry was written at a
    /// later `modified` time: an older observation never overwrites a newer
    /// one.
    pub fn set(&mut self, uid: &PodUid, entry: CacheEntry) -> bool {
        match self.shared.entries.entry(uid.clone()) {
            dashmap::Entry::Occupied(mut existing) => {
                if existing.get().modified > entry.modified {
                    return false;
                }
                existing.insert(entry);
            }
            dashmap::Entry::Vacant(slot) => {
                slot.insert(entry);
            }
        }
        self.shared.changed.notify_waiters();
        true
    }

    /// Forgets a pod.
    pub fn delete(&mut self, uid: &PodUid) {
        if self.shared.entries.remove(uid).is_some() {
            self.shared.changed.notify_waiters();
        }
    }

    /// Declares the whole cache fresh as of `timestamp` (never moves back).
    pub fn update_time(&mut self, timestamp: Instant) {
        {
            let mut global = self.shared.global.lock();
            if global.is_some_and(|g| g >= timestamp) {
                return;
            }
            *global = Some(timestamp);
        }
        self.shared.changed.notify_waiters();
    }

    /// Number of pods cached.
    pub fn len(&self) -> usize {
        self.shared.entries.len()
    }

    /// Whether no pod is cached.
    pub fn is_empty(&self) -> bool {
        self.shared.entries.is_empty()
    }
}

impl Reader {
    /// The entry of a pod.
    pub fn get(&self, uid: &PodUid) -> Option<CacheEntry> {
        get(&self.shared, uid)
    }

    /// Waits until the pod's entry was written after `t`, or the whole cache
    /// is fresh as of a time after `t`, then returns the entry. `None` means
    /// the pod does not exist as of that newer time.
    pub async fn get_newer_than(&self, uid: &PodUid, t: Instant) -> Option<CacheEntry> {
        loop {
            // Register interest before looking, so a write between the look
            // and the wait still wakes us.
            let mut changed = pin!(self.shared.changed.notified());
            changed.as_mut().enable();
            let entry = get(&self.shared, uid);
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
        *self.shared.global.lock()
    }

    /// Every cached entry, in no particular order.
    pub fn entries(&self) -> Vec<CacheEntry> {
        self.shared
            .entries
            .iter()
            .map(|e| e.value().clone())
            .collect()
    }

    /// Number of pods cached.
    pub fn len(&self) -> usize {
        self.shared.entries.len()
    }

    /// Whether no pod is cached.
    pub fn is_empty(&self) -> bool {
        self.shared.entries.is_empty()
    }
}

fn get(shared: &Shared, uid: &PodUid) -> Option<CacheEntry> {
    shared.entries.get(uid).map(|e| e.value().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Container, ContainerState, PodMeta};
    use std::time::Duration;

    fn entry(uid: &str, ips: &[&str], modified: Instant) -> CacheEntry {
        let mut s = PodStatus::new(Arc::new(PodMeta::new(uid, uid, "ns")));
        s.ips = ips.iter().map(std::string::ToString::to_string).collect();
        s.sandboxes
            .push(Container::new("s", uid, ContainerState::Running));
        CacheEntry {
            status: Arc::new(s),
            error: None,
            modified,
            last_events: Arc::from([]),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn set_refuses_an_older_timestamp() {
        let mut cache = Writer::new();
        let uid = PodUid::new("p");
        let t = Instant::now();
        assert!(cache.set(&uid, entry("p", &["10.0.0.1"], t)));
        let older = t - Duration::from_secs(1);
        assert!(!cache.set(&uid, entry("p", &["10.0.0.2"], older)));
        assert_eq!(
            cache.get(&uid).map(|e| e.status.ips.clone()),
            Some(vec!["10.0.0.1".into()])
        );
        assert!(cache.set(&uid, entry("p", &["10.0.0.3"], t)));
    }

    #[tokio::test(start_paused = true)]
    async fn readers_get_exactly_what_was_stored() {
        let mut cache = Writer::new();
        let reader = cache.reader();
        let uid = PodUid::new("p");
        let stored = entry("p", &[], Instant::now());
        cache.set(&uid, stored.clone());
        let read = reader.get(&uid).expect("cached");
        assert!(Arc::ptr_eq(&read.status, &stored.status));
        assert!(
            read.status.ips.is_empty(),
            "nothing added to what was given"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn get_newer_than_is_woken_by_an_entry_write() {
        let mut cache = Writer::new();
        let reader = cache.reader();
        let uid = PodUid::new("p");
        let t0 = Instant::now();
        cache.set(&uid, entry("p", &[], t0));
        let waiter = tokio::spawn({
            let uid = uid.clone();
            async move { reader.get_newer_than(&uid, t0).await }
        });
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        cache.set(&uid, entry("p", &["10.0.0.9"], Instant::now()));
        let entry = waiter.await.expect("waiter task").expect("pod entry");
        assert_eq!(entry.status.ips, ["10.0.0.9"]);
    }

    #[tokio::test(start_paused = true)]
    async fn delete_forgets_the_pod() {
        let mut cache = Writer::new();
        let uid = PodUid::new("p");
        cache.set(&uid, entry("p", &[], Instant::now()));
        cache.delete(&uid);
        assert!(cache.get(&uid).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn last_event_is_found_by_id() {
        let at = SystemTime::UNIX_EPOCH;
        let last = |id: &str| LastEvent {
            id: id.into(),
            kind: EventType::ContainerStarted,
            at,
            source: EventSource::Relist,
        };
        let mut e = entry("p", &[], Instant::now());
        e.last_events = Arc::from([last("a"), last("c")]);
        assert_eq!(e.last_event(&"c".into()).map(|l| l.id.as_str()), Some("c"));
        assert!(e.last_event(&"b".into()).is_none());
    }
}
