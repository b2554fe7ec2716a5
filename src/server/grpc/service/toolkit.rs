//! The toolkit's calls: `WaitFor`, `Monitor`, `TerminalReports` and
//! `WatchSession`.
//!
//! Each streaming call runs one task that owns what it reads (a monitor
//! pool, a subscription, a session receiver) and sends into a channel of
//! one item, so it holds no more than its bounded hub queue, like `Watch`.
//! The task ends when the client goes away (the channel closes), when the
//! service ends its streams (shutdown), or when it has said everything; it
//! never outlives the call by more than that.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use parking_lot::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::super::convert::{
    listing_to_pb, progress_to_pb, report_to_pb, selection_filter, session_update_to_pb,
    terminal_resync_to_pb, terminal_to_pb, toolkit_timeout, until_from_pb,
};
use super::super::{PodListing, pb, pod_listing};
use super::{Permits, PlegService};
use crate::hub::{DEFAULT_CAPACITY, Delivery, SubscribeOptions};
use crate::monitor::{MonitorPool, MonitorProgress};
use crate::session::{SessionError, SessionOptions, SessionWatcher};
use crate::terminal::TerminalReports;

/// The session watchers of the service, one per pair of labels.
pub(in crate::server::grpc) type Sessions = Arc<Mutex<HashMap<(String, String), SessionWatcher>>>;

/// The monitors kept past their call (`keep_on_disconnect`), by ID.
pub(in crate::server::grpc) type KeptMonitors = Arc<Mutex<HashMap<String, Kept>>>;

/// A kept monitor, as a call that follows it reads it.
#[derive(Clone, Debug)]
pub(in crate::server::grpc) struct Kept {
    progress: watch::Receiver<MonitorProgress>,
    /// Its report, once it has ended.
    report: watch::Receiver<Option<Arc<pb::MonitorUpdate>>>,
}

/// Monitors kept past their call at once, at most: each holds a hub queue
/// of 4,096 events while it runs.
pub const MAX_KEPT_MONITORS: usize = 16;
/// How long a kept monitor's report stays to be fetched after it ends.
pub const KEPT_REPORT_FOR: Duration = Duration::from_mins(10);

/// The queue of a `WaitFor`'s subscription: it only needs to be woken.
const WAIT_CAPACITY: usize = 64;
/// The queue of a `Monitor`'s subscription (`MonitorPool`'s).
const MONITOR_CAPACITY: usize = 4096;
/// A session's queue when the request gives none.
const SESSION_CAPACITY: usize = 32;

/// The server side of a toolkit stream: what its task sends, and the
/// stream's slot and queue places.
pub struct ToolkitStream<T> {
    items: mpsc::Receiver<Result<T, Status>>,
    _permits: Permits,
}

impl<T> std::fmt::Debug for ToolkitStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolkitStream").finish_non_exhaustive()
    }
}

impl<T> Stream for ToolkitStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().items.poll_recv(cx)
    }
}

impl PlegService {
    /// A listing with its health set as the daemon tells it (crash loops
    /// included).
    pub(super) fn status_to_pb(&self, listing: &PodListing) -> pb::PodStatus {
        listing_to_pb(listing, &self.daemon.health(&listing.status))
    }

    pub(super) async fn toolkit_wait_for(
        &self,
        request: &pb::WaitForRequest,
    ) -> Result<pb::WaitForResponse, Status> {
        if self.ending.is_cancelled() {
            return Err(Status::unavailable("the pleg daemon is shutting down"));
        }
        let filter = selection_filter(request.pods.as_ref())?;
        let until = until_from_pb(request)?;
        let timeout = toolkit_timeout("timeout_ms", request.timeout_ms)?;
        let _permits = self.admit("WaitFor", WAIT_CAPACITY)?;
        let pleg = &self.daemon.pleg;
        let started = tokio::time::Instant::now();
        let until_text = format!("{until:?}");
        let outcome = tokio::select! {
            outcome = pleg.wait_for(&filter, until, timeout) => outcome,
            () = self.ending.cancelled() => {
                return Err(Status::unavailable("the pleg daemon is shutting down"));
            }
        };
        let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let listed = |status: &Arc<crate::model::PodStatus>| {
            pod_listing(pleg, &status.meta.uid)
                .map(|l| self.status_to_pb(&l))
                .or_else(|| {
                    // Gone from the cache since: what the wait saw.
                    Some(self.status_to_pb(&PodListing {
                        status: (**status).clone(),
                        error: None,
                        last_events: Vec::new(),
                        health: None,
                    }))
                })
        };
        match outcome {
            Ok(met) => {
                let message = match &met.status {
                    Some(s) => format!(
                        "{until_text}: met by {}/{} ({})",
                        s.meta.namespace,
                        s.meta.name,
                        self.daemon.health(s)
                    ),
                    None => format!("{until_text}: met, no selected pod is left"),
                };
                Ok(pb::WaitForResponse {
                    met: true,
                    status: met.status.as_ref().and_then(listed),
                    waited_ms,
                    message,
                })
            }
            Err(crate::wait::WaitError::TimedOut { last, .. }) => {
                let message = match &last {
                    Some(s) => format!(
                        "{until_text}: not met within {}; {}/{} is {}",
                        crate::duration::format(timeout),
                        s.meta.namespace,
                        s.meta.name,
                        self.daemon.health(s)
                    ),
                    None => format!(
                        "{until_text}: not met within {}; no selected pod",
                        crate::duration::format(timeout)
                    ),
                };
                Ok(pb::WaitForResponse {
                    met: false,
                    status: last.as_ref().and_then(listed),
                    waited_ms,
                    message,
                })
            }
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    pub(super) fn toolkit_monitor(
        &self,
        request: &pb::MonitorRequest,
    ) -> Result<ToolkitStream<pb::MonitorUpdate>, Status> {
        if !request.attach.is_empty() {
            return self.follow_kept_monitor(&request.attach);
        }
        let filter = selection_filter(request.pods.as_ref())?;
        let timeout = toolkit_timeout("timeout_ms", request.timeout_ms)?;
        if request.keep_on_disconnect {
            return self.keep_monitor(filter, timeout);
        }
        let permits = self.admit("Monitor", MONITOR_CAPACITY)?;
        let pool = MonitorPool::new(&self.daemon.pleg);
        pool.select_and_monitor(filter, timeout)
            .map_err(|e| Status::internal(e.to_string()))?;
        let (tx, items) = mpsc::channel(1);
        let ending = self.ending.clone();
        tokio::spawn(async move {
            let mut progress = pool.progress();
            // The counts at the start: the monitor is watching from here on.
            let start = *progress.borrow_and_update();
            if tx.send(Ok(progress_to_pb(&start, ""))).await.is_err() {
                pool.cancel();
                return;
            }
            loop {
                tokio::select! {
                    () = tx.closed() => {
                        pool.cancel();
                        return;
                    }
                    () = ending.cancelled() => pool.cancel(),
                    changed = progress.changed() => {
                        let p = *progress.borrow_and_update();
                        if changed.is_ok() && p.running > 0 {
                            if tx.send(Ok(progress_to_pb(&p, ""))).await.is_err() {
                                pool.cancel();
                                return;
                            }
                            continue;
                        }
                    }
                }
                break;
            }
            let report = pool.join().await;
            let _ = tx.send(Ok(report_to_pb(&report))).await;
        });
        Ok(ToolkitStream {
            items,
            _permits: permits,
        })
    }

    /// Starts a monitor that outlives its call: it runs in a task of its
    /// own (to its timeout, until all recovered, or until the daemon ends),
    /// publishes its counts and its report, and is forgotten
    /// [`KEPT_REPORT_FOR`] after it ends. The call follows it.
    fn keep_monitor(
        &self,
        filter: crate::hub::Filter,
        timeout: Duration,
    ) -> Result<ToolkitStream<pb::MonitorUpdate>, Status> {
        // The call's place first: a monitor whose call is refused would
        // run unwatched and hold one of the kept places for nothing.
        let permits = self.admit("Monitor", 1)?;
        let id = crate::hub::Epoch::new().to_string();
        let pool = MonitorPool::new(&self.daemon.pleg);
        let (report_tx, report) = watch::channel(None);
        let kept = Kept {
            progress: pool.progress(),
            report,
        };
        {
            let mut registry = self.kept_monitors.lock();
            if registry.len() >= MAX_KEPT_MONITORS {
                return Err(Status::resource_exhausted(format!(
                    "the pleg daemon keeps at most {MAX_KEPT_MONITORS} monitors past their call \
                     (keep_on_disconnect), and they are all running or holding their report; \
                     try again later or monitor without keep_on_disconnect"
                )));
            }
            pool.select_and_monitor(filter, timeout)
                .map_err(|e| Status::internal(e.to_string()))?;
            registry.insert(id.clone(), kept.clone());
        }
        tracing::debug!(monitor_id = %id, "kept monitor started");
        let (ending, registry, key) = (self.ending.clone(), self.kept_monitors.clone(), id.clone());
        tokio::spawn(async move {
            let report = tokio::select! {
                report = pool.join() => report,
                () = ending.cancelled() => {
                    pool.cancel();
                    pool.join().await
                }
            };
            let _ = report_tx.send(Some(Arc::new(report_to_pb(&report))));
            tokio::select! {
                () = tokio::time::sleep(KEPT_REPORT_FOR) => {}
                () = ending.cancelled() => {}
            }
            registry.lock().remove(&key);
        });
        Ok(follow(kept, id, permits))
    }

    /// A call with `attach`: follows kept monitor `id`, if the daemon has it.
    fn follow_kept_monitor(&self, id: &str) -> Result<ToolkitStream<pb::MonitorUpdate>, Status> {
        let Some(kept) = self.kept_monitors.lock().get(id).cloned() else {
            let shown: String = id.chars().take(64).collect();
            return Err(Status::not_found(format!(
                "attach: the pleg daemon has no monitor {shown:?}: its report is older than {}, \
                 or the daemon restarted since (monitors do not outlive it)",
                crate::duration::format(KEPT_REPORT_FOR)
            )));
        };
        // A follower holds no hub queue of its own: one place.
        let permits = self.admit("Monitor", 1)?;
        Ok(follow(kept, id.to_string(), permits))
    }

    pub(super) fn toolkit_terminal_reports(
        &self,
        request: &pb::TerminalReportsRequest,
    ) -> Result<ToolkitStream<pb::TerminalReportEvent>, Status> {
        let filter = selection_filter(request.pods.as_ref())?;
        let capacity = self.capacity("capacity", request.capacity, DEFAULT_CAPACITY)?;
        let permits = self.admit("TerminalReports", capacity)?;
        let pleg = &self.daemon.pleg;
        let mut subscription = pleg
            .subscribe_with(SubscribeOptions::filtered(filter.clone()).with_capacity(capacity))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Then what the cache holds, so that a pod that runs already is
        // reported with every container when it ends.
        let mut reports = TerminalReports::new();
        for entry in pleg.cache().entries() {
            if filter.matches_pod(&entry.status.meta) {
                reports.track(&entry.status);
            }
        }
        let (tx, items) = mpsc::channel(1);
        let ending = self.ending.clone();
        tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    () = tx.closed() => return,
                    () = ending.cancelled() => return,
                    d = subscription.recv() => d,
                };
                let item = match delivery {
                    Some(Delivery::Event(event)) => match reports.observe(&event) {
                        Some(report) => terminal_to_pb(&report),
                        None => continue,
                    },
                    Some(Delivery::Resync { missed, reason, .. }) => {
                        terminal_resync_to_pb(missed, reason)
                    }
                    // Never asked for here.
                    Some(Delivery::Initial(_) | Delivery::Synced(_)) => continue,
                    None => return,
                };
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
        });
        Ok(ToolkitStream {
            items,
            _permits: permits,
        })
    }

    pub(super) fn toolkit_watch_session(
        &self,
        request: &pb::WatchSessionRequest,
    ) -> Result<ToolkitStream<pb::SessionUpdate>, Status> {
        if request.session.is_empty() {
            return Err(Status::invalid_argument(
                "session is empty; give the value of the pods' session label",
            ));
        }
        for (field, value) in [
            ("session", &request.session),
            ("session_label", &request.session_label),
            ("component_label", &request.component_label),
        ] {
            if value.len() > 317 {
                return Err(Status::invalid_argument(format!(
                    "{field} is {} bytes long; at most 317 are allowed",
                    value.len()
                )));
            }
        }
        let capacity = self.capacity("capacity", request.capacity, SESSION_CAPACITY)?;
        let or = |value: &str, default: &str| {
            if value.is_empty() {
                default.to_owned()
            } else {
                value.to_owned()
            }
        };
        let labels = (
            or(&request.session_label, "session"),
            or(&request.component_label, "component"),
        );
        let watcher = self
            .sessions
            .lock()
            .entry(labels.clone())
            .or_insert_with(|| {
                SessionWatcher::new(
                    &self.daemon.pleg,
                    SessionOptions::default()
                        .with_session_label(labels.0.clone())
                        .with_component_label(labels.1.clone()),
                )
            })
            .clone();
        let permits = self.admit("WatchSession", capacity)?;
        let mut receiver = watcher
            .subscribe_with_capacity(&request.session, capacity)
            .map_err(|e| match e {
                SessionError::AlreadySubscribed(_) => Status::already_exists(format!(
                    "{e}: a session has one subscriber at a time (its WatchSession stream)"
                )),
                _ => Status::internal(e.to_string()),
            })?;
        let (tx, items) = mpsc::channel(1);
        let ending = self.ending.clone();
        tokio::spawn(async move {
            loop {
                let update = tokio::select! {
                    () = tx.closed() => return,
                    () = ending.cancelled() => return,
                    u = receiver.recv() => u,
                };
                let Some(update) = update else { return };
                if tx.send(Ok(session_update_to_pb(&update))).await.is_err() {
                    return;
                }
            }
        });
        Ok(ToolkitStream {
            items,
            _permits: permits,
        })
    }

    /// A request's queue length: 0 for the default, at most the limit.
    fn capacity(&self, field: &str, requested: u32, default: usize) -> Result<usize, Status> {
        match usize::try_from(requested) {
            Ok(0) => Ok(default.min(self.limits.max_capacity).max(1)),
            Ok(c) if c <= self.limits.max_capacity => Ok(c),
            _ => Err(Status::invalid_argument(format!(
                "{field} {requested} is above the maximum of {} (the daemon's --grpc-max-capacity)",
                self.limits.max_capacity
            ))),
        }
    }
}

/// The task of a call that follows a kept monitor: its counts now and as
/// they change, then its report. The call ending leaves the monitor be.
fn follow(kept: Kept, id: String, permits: Permits) -> ToolkitStream<pb::MonitorUpdate> {
    let (tx, items) = mpsc::channel(1);
    tokio::spawn(async move {
        let Kept {
            mut progress,
            mut report,
        } = kept;
        let now = *progress.borrow_and_update();
        if tx.send(Ok(progress_to_pb(&now, &id))).await.is_err() {
            return;
        }
        loop {
            let done = report.borrow_and_update().clone();
            if let Some(done) = done {
                let _ = tx.send(Ok((*done).clone())).await;
                return;
            }
            tokio::select! {
                () = tx.closed() => return,
                changed = progress.changed() => {
                    if changed.is_ok() {
                        let p = *progress.borrow_and_update();
                        if tx.send(Ok(progress_to_pb(&p, &id))).await.is_err() {
                            return;
                        }
                    } else {
                        // The pool is gone; its report is (or will be) set.
                        if report.changed().await.is_err() {
                            return;
                        }
                    }
                }
                changed = report.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    });
    ToolkitStream {
        items,
        _permits: permits,
    }
}
