//! Recovery monitors: after killing pods or containers, how long did each
//! take to come back? (krkn's `PodsMonitorPool`, at node level.)
//!
//! [`MonitorPool::select_and_monitor`] pushes a monitor of a
//! [`PodSelector`] for at most a timeout. The selection is live: a pod that
//! comes to match while the monitor runs is monitored too. For each
//! container or pod of the selection that dies while monitored, the
//! monitor records a [`Recovery`]:
//!
//! | what died | replaced by | running when |
//! |---|---|---|
//! | a container (not with its pod) | a later attempt of the same container name in the same pod | that attempt has started |
//! | a pod (its sandbox) | a new sandbox of a pod with the same namespace and name (the UID may be new) | that pod's phase is `Running` |
//!
//! The containers that die with their pod are part of the pod's death, not
//! deaths of their own. Times are the runtime's where it gives them (a
//! container's finish, a replacement's creation and start), so a recovery
//! is the runtime's timeline, not how soon pleg heard of it.
//!
//! # Ending
//! A monitor ends when its timeout passes (after one last relist, so a
//! replacement that is not relisted yet still counts), when everything it
//! saw die has recovered, or at [`MonitorPool::cancel`]. What has not
//! recovered by then is unrecovered, with how far it got.
//! [`MonitorPool::join`] waits for every monitor and merges their reports;
//! a monitor that failed (the generator stopped, or it fell behind and lost
//! events) keeps what it gathered beside its error.
//!
//! Unlike krkn, a death that is never replaced is not an error of the
//! monitor: it is an unrecovered item. `error` is kept for a monitor that
//! could not watch.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Pleg;
use crate::event::PodLifecycleEvent;
use crate::hub::{Delivery, Filter, ResyncReason, SubscribeOptions};
use crate::model::{ContainerId, PodMeta, PodUid};
use crate::select::{PodSelector, SelectorError};

mod tracker;

use tracker::Tracker;

/// How many events a pool keeps for [`MonitorPool::events`]; later ones
/// are counted, not kept.
pub const KEPT_EVENTS: usize = 65_536;

/// One death and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recovery {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The UID of the pod that died, or whose container died.
    pub pod_uid: PodUid,
    /// The container's name; `None` when the pod died.
    pub container: Option<String>,
    /// The ID of the container, or of the pod's sandbox, that died.
    pub dead_id: ContainerId,
    /// When it died.
    pub died_at: SystemTime,
    /// The replacement: the new container's ID, or the new sandbox's.
    pub replacement_id: Option<ContainerId>,
    /// The UID of the replacement's pod (new when a pod came back as a new
    /// pod of the same name).
    pub replacement_pod_uid: Option<PodUid>,
    /// When the replacement was created.
    pub replaced_at: Option<SystemTime>,
    /// When the replacement was running.
    pub running_at: Option<SystemTime>,
}

impl Recovery {
    pub(crate) fn died(
        pod: &PodMeta,
        container: Option<String>,
        dead_id: ContainerId,
        died_at: SystemTime,
    ) -> Self {
        Recovery {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            pod_uid: pod.uid.clone(),
            container,
            dead_id,
            died_at,
            replacement_id: None,
            replacement_pod_uid: None,
            replaced_at: None,
            running_at: None,
        }
    }

    /// Whether the replacement reached running.
    pub fn is_recovered(&self) -> bool {
        self.running_at.is_some()
    }

    /// From the death to the replacement's creation.
    pub fn time_to_replacement(&self) -> Option<Duration> {
        self.replaced_at.map(|t| since(self.died_at, t))
    }

    /// From the replacement's creation to its running.
    pub fn time_to_running(&self) -> Option<Duration> {
        Some(since(self.replaced_at?, self.running_at?))
    }

    /// From the death to the replacement's running: the recovery time.
    pub fn recovery(&self) -> Option<Duration> {
        self.running_at.map(|t| since(self.died_at, t))
    }
}

/// `to - from`, or zero when the clocks disagree on the order.
fn since(from: SystemTime, to: SystemTime) -> Duration {
    to.duration_since(from).unwrap_or_default()
}

/// Why a monitor could not watch to the end.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// The generator stopped while the monitor ran.
    #[error("the generator stopped while monitoring")]
    Closed,
    /// The monitor fell behind and lost events: deaths may be missing.
    #[error(
        "the monitor fell behind and lost {missed} events: deaths may be missing from the report"
    )]
    Lagged {
        /// How many.
        missed: u64,
    },
    /// The runtime's event stream lost events no relist can rebuild
    /// (another consumer of it?): short-lived deaths may be missing.
    #[error(
        "the runtime's event stream lost at least {missed} events (another consumer of it?): short-lived deaths may be missing"
    )]
    StreamGap {
        /// How many, at least.
        missed: u64,
    },
    /// There is no tokio runtime to run the monitor on.
    #[error("a monitor needs a tokio runtime")]
    NoTokioRuntime,
    /// The monitor's task ended abnormally.
    #[error("a monitor's task failed: {0}")]
    Task(String),
    /// A daemon's monitor said this (over gRPC).
    #[error("{0}")]
    Daemon(String),
}

/// What a pool gathered: every death, recovered or not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MonitorReport {
    /// Deaths whose replacement reached running, in the order they died.
    pub recovered: Vec<Recovery>,
    /// Deaths not recovered when monitoring ended (replaced or not).
    pub unrecovered: Vec<Recovery>,
    /// The first error of a monitor that could not watch to the end; the
    /// rest of the report is what it gathered before.
    pub error: Option<MonitorError>,
    /// Whether [`MonitorPool::cancel`] ended the monitoring.
    pub cancelled: bool,
}

impl MonitorReport {
    /// Whether every death recovered (true when nothing died).
    pub fn all_recovered(&self) -> bool {
        self.unrecovered.is_empty()
    }

    /// Adds another monitor's report: a death two monitors saw is kept once
    /// (recovered, when either saw it recover).
    pub fn merge(&mut self, other: MonitorReport) {
        for r in other.recovered {
            self.unrecovered.retain(|u| u.dead_id != r.dead_id);
            if !self.recovered.iter().any(|k| k.dead_id == r.dead_id) {
                self.recovered.push(r);
            }
        }
        for r in other.unrecovered {
            let seen = |k: &Recovery| k.dead_id == r.dead_id;
            if !self.recovered.iter().any(seen) && !self.unrecovered.iter().any(seen) {
                self.unrecovered.push(r);
            }
        }
        if self.error.is_none() {
            self.error = other.error;
        }
        self.cancelled |= other.cancelled;
        self.recovered.sort_by_key(|r| r.died_at);
        self.unrecovered.sort_by_key(|r| r.died_at);
    }
}

/// The pool's counts so far, for a progress line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MonitorProgress {
    /// Monitors pushed.
    pub monitors: usize,
    /// Monitors still running.
    pub running: usize,
    /// Deaths seen.
    pub died: usize,
    /// Deaths recovered.
    pub recovered: usize,
}

impl MonitorProgress {
    /// Counts of one monitor that runs (as a daemon's `Monitor` reports).
    pub fn counted(died: usize, recovered: usize) -> Self {
        MonitorProgress {
            monitors: 1,
            running: 1,
            died,
            recovered,
        }
    }

    /// Deaths not recovered yet.
    pub fn pending(&self) -> usize {
        self.died.saturating_sub(self.recovered)
    }
}

impl fmt::Display for MonitorProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} died, {} recovered, {} pending ({} of {} monitors running)",
            self.died,
            self.recovered,
            self.pending(),
            self.running,
            self.monitors
        )
    }
}

/// The events the pool's monitors took in.
#[derive(Default)]
struct Seen {
    events: Vec<Arc<PodLifecycleEvent>>,
    ids: HashSet<usize>,
    not_kept: u64,
}

/// Progress of each monitor, summed into the pool's.
#[derive(Default)]
struct Counts {
    /// Per monitor: (died, recovered, running).
    each: Vec<(usize, usize, bool)>,
}

impl Counts {
    fn total(&self) -> MonitorProgress {
        let mut p = MonitorProgress {
            monitors: self.each.len(),
            ..MonitorProgress::default()
        };
        for &(died, recovered, running) in &self.each {
            p.died += died;
            p.recovered += recovered;
            p.running += usize::from(running);
        }
        p
    }
}

struct Shared {
    seen: Mutex<Seen>,
    counts: Mutex<Counts>,
    progress: watch::Sender<MonitorProgress>,
}

impl Shared {
    fn update(&self, index: usize, died: usize, recovered: usize, running: bool) {
        let total = {
            let mut counts = self.counts.lock();
            if let Some(slot) = counts.each.get_mut(index) {
                *slot = (died, recovered, running);
            }
            counts.total()
        };
        self.progress.send_replace(total);
    }

    fn keep(&self, event: &Arc<PodLifecycleEvent>) {
        let mut seen = self.seen.lock();
        // The same event reaches every monitor: keep it once.
        let id = Arc::as_ptr(event) as usize;
        if seen.ids.contains(&id) {
            return;
        }
        if seen.events.len() >= KEPT_EVENTS {
            seen.not_kept += 1;
            return;
        }
        seen.ids.insert(id);
        seen.events.push(Arc::clone(event));
    }
}

/// A pool of recovery monitors (see the module).
pub struct MonitorPool {
    pleg: Pleg,
    cancel: CancellationToken,
    monitors: Mutex<Vec<JoinHandle<MonitorReport>>>,
    shared: Arc<Shared>,
}

impl fmt::Debug for MonitorPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MonitorPool")
            .field("progress", &*self.shared.progress.borrow())
            .finish_non_exhaustive()
    }
}

impl MonitorPool {
    /// An empty pool over this generator.
    pub fn new(pleg: &Pleg) -> Self {
        MonitorPool {
            pleg: pleg.clone(),
            cancel: CancellationToken::new(),
            monitors: Mutex::new(Vec::new()),
            shared: Arc::new(Shared {
                seen: Mutex::new(Seen::default()),
                counts: Mutex::new(Counts::default()),
                progress: watch::Sender::new(MonitorProgress::default()),
            }),
        }
    }

    /// Pushes a monitor of the pods `selection` selects (a
    /// [`PodSelector`], or a whole [`Filter`] to add UIDs, a namespace or
    /// labels; its event kinds do not matter), for at most `max_timeout`.
    /// It watches from this call on.
    ///
    /// # Errors
    /// [`MonitorError::NoTokioRuntime`] outside a tokio runtime.
    pub fn select_and_monitor(
        &self,
        selection: impl Into<Filter>,
        max_timeout: Duration,
    ) -> Result<(), MonitorError> {
        let handle =
            tokio::runtime::Handle::try_current().map_err(|_| MonitorError::NoTokioRuntime)?;
        // Every event of every pod: a replacement may not match the
        // selection (a new pod of the same name with other labels).
        let options = SubscribeOptions::filtered(Filter::all().with_container_changed(true))
            .with_capacity(4096);
        let Ok(subscription) = self.pleg.subscribe_with(options) else {
            return Err(MonitorError::Task("could not subscribe".into()));
        };
        let index = {
            let mut counts = self.shared.counts.lock();
            counts.each.push((0, 0, true));
            counts.each.len() - 1
        };
        self.shared.update(index, 0, 0, true);
        let monitor = Monitor {
            pleg: self.pleg.clone(),
            tracker: Tracker::new(selection.into()),
            subscription,
            cancel: self.cancel.child_token(),
            shared: Arc::clone(&self.shared),
            index,
            deadline: tokio::time::Instant::now() + max_timeout,
            error: None,
        };
        self.monitors.lock().push(handle.spawn(monitor.run()));
        Ok(())
    }

    /// Monitors the pods a label selector selects (`kubectl`'s syntax).
    ///
    /// # Errors
    /// [`MonitorSelectError::Selector`] for a bad selector (naming the
    /// column); [`MonitorSelectError::Monitor`] as
    /// [`MonitorPool::select_and_monitor`].
    pub fn select_and_monitor_by_label(
        &self,
        label_selector: &str,
        max_timeout: Duration,
    ) -> Result<(), MonitorSelectError> {
        let selector = PodSelector::labels(label_selector)?;
        Ok(self.select_and_monitor(selector, max_timeout)?)
    }

    /// Monitors the pods whose name and namespace match these regexes (as
    /// wholes).
    ///
    /// # Errors
    /// As [`MonitorPool::select_and_monitor_by_label`].
    pub fn select_and_monitor_by_name_pattern_and_namespace_pattern(
        &self,
        name_pattern: &str,
        namespace_pattern: &str,
        max_timeout: Duration,
    ) -> Result<(), MonitorSelectError> {
        let selector = PodSelector::everything()
            .with_name_regex(name_pattern)?
            .with_namespace_regex(namespace_pattern)?;
        Ok(self.select_and_monitor(selector, max_timeout)?)
    }

    /// Monitors the pods of the namespaces matching a regex that a label
    /// selector selects.
    ///
    /// # Errors
    /// As [`MonitorPool::select_and_monitor_by_label`].
    pub fn select_and_monitor_by_namespace_pattern_and_label(
        &self,
        namespace_pattern: &str,
        label_selector: &str,
        max_timeout: Duration,
    ) -> Result<(), MonitorSelectError> {
        let selector =
            PodSelector::labels(label_selector)?.with_namespace_regex(namespace_pattern)?;
        Ok(self.select_and_monitor(selector, max_timeout)?)
    }

    /// Ends every monitor now; [`MonitorPool::join`] then returns what they
    /// gathered.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Waits for every monitor pushed so far and merges their reports.
    pub async fn join(&self) -> MonitorReport {
        let monitors = std::mem::take(&mut *self.monitors.lock());
        let mut report = MonitorReport::default();
        for monitor in monitors {
            match monitor.await {
                Ok(r) => report.merge(r),
                Err(e) => {
                    report
                        .error
                        .get_or_insert(MonitorError::Task(e.to_string()));
                }
            }
        }
        report
    }

    /// The pool's counts, updated as monitors see deaths and recoveries.
    pub fn progress(&self) -> watch::Receiver<MonitorProgress> {
        self.shared.progress.subscribe()
    }

    /// The events the monitors took in: those of selected pods, and of the
    /// pods that replaced them (at most [`KEPT_EVENTS`]).
    pub fn events(&self) -> Vec<Arc<PodLifecycleEvent>> {
        self.shared.seen.lock().events.clone()
    }

    /// Events taken in beyond [`KEPT_EVENTS`], counted but not kept.
    pub fn events_not_kept(&self) -> u64 {
        self.shared.seen.lock().not_kept
    }
}

/// A bad selector, or a monitor that could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorSelectError {
    /// The selector.
    #[error(transparent)]
    Selector(#[from] SelectorError),
    /// The monitor.
    #[error(transparent)]
    Monitor(#[from] MonitorError),
}

/// One running monitor.
struct Monitor {
    pleg: Pleg,
    tracker: Tracker,
    subscription: crate::hub::Subscription,
    cancel: CancellationToken,
    shared: Arc<Shared>,
    index: usize,
    deadline: tokio::time::Instant,
    /// The first loss it saw; it goes on watching.
    error: Option<MonitorError>,
}

/// How a monitor's watching ended.
enum End {
    Deadline,
    AllRecovered,
    Cancelled,
    Failed(MonitorError),
}

impl Monitor {
    async fn run(mut self) -> MonitorReport {
        if self.pleg.last_relist().is_none() {
            // A generator that never listed reports, at its first listing,
            // every container that exited before as a death: that is
            // history, not a death this monitor saw. List once, and let go
            // of what that listing published.
            let listed = tokio::select! {
                () = self.cancel.cancelled() => None,
                listed = self.pleg.relist() => Some(listed),
            };
            if listed.is_some_and(|l| l.is_ok()) {
                while self.subscription.try_recv().is_some() {}
            }
        }
        let end = self.watch().await;
        let mut error = self.error.take();
        let mut cancelled = false;
        match end {
            End::Deadline => {
                // One last look at the runtime, and at what it published.
                let _ = self.pleg.relist().await;
                while let Some(delivery) = self.subscription.try_recv() {
                    if let Delivery::Event(event) = delivery {
                        self.take(&event);
                    }
                }
                let now = self.pleg.clock().now();
                self.tracker.settle(&self.pleg.cache(), now);
            }
            End::AllRecovered => {}
            End::Cancelled => cancelled = true,
            End::Failed(e) => {
                error.get_or_insert(e);
            }
        }
        let (died, recovered) = self.tracker.counts();
        self.shared.update(self.index, died, recovered, false);
        let mut report = MonitorReport {
            error,
            cancelled,
            ..MonitorReport::default()
        };
        for r in self.tracker.into_recoveries() {
            if r.is_recovered() {
                report.recovered.push(r);
            } else {
                report.unrecovered.push(r);
            }
        }
        report
    }

    async fn watch(&mut self) -> End {
        loop {
            let delivery = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return End::Cancelled,
                () = tokio::time::sleep_until(self.deadline) => return End::Deadline,
                d = self.subscription.recv() => d,
            };
            match delivery {
                Some(Delivery::Event(event)) => self.take(&event),
                Some(Delivery::Resync { missed, reason, .. }) => {
                    // Keep watching, and catch up on what the cache holds;
                    // the report says what may be missing.
                    self.error.get_or_insert(match reason {
                        ResyncReason::StreamGap => MonitorError::StreamGap { missed },
                        _ => MonitorError::Lagged { missed },
                    });
                    let now = self.pleg.clock().now();
                    self.tracker.settle(&self.pleg.cache(), now);
                    self.publish_counts();
                }
                // Never asked for here.
                Some(Delivery::Initial(_) | Delivery::Synced(_)) => {}
                None => return End::Failed(MonitorError::Closed),
            }
            if self.tracker.all_recovered() {
                return End::AllRecovered;
            }
        }
    }

    fn publish_counts(&self) {
        let (died, recovered) = self.tracker.counts();
        self.shared.update(self.index, died, recovered, true);
    }

    fn take(&mut self, event: &Arc<PodLifecycleEvent>) {
        let before = self.tracker.counts();
        if self.tracker.observe(event, &self.pleg.cache()) {
            self.shared.keep(event);
        }
        if self.tracker.counts() != before {
            self.publish_counts();
        }
    }
}

#[cfg(test)]
mod tests;
