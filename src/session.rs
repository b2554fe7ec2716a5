//! Sessions: one bounded channel of pod health per session, the way a test
//! orchestrator hands each test session the health of its own pods.
//!
//! A session is the value of a pod label (`session` by default); a second
//! label names the pod's component (`component` by default). Each session
//! has at most one subscriber. Its channel is a hub subscription filtered on
//! the session's label, so it is bounded (32 by default), costs nothing when
//! idle, and never loses silently: when the subscriber falls behind it gets
//! a [`SessionUpdate::Resync`] with the exact count it missed.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::Pleg;
use crate::event::PodLifecycleEvent;
use crate::hub::{Delivery, Filter, ResyncReason, SubscribeOptions, Subscription};
use crate::phase::{CrashLoopRule, CrashLoops, Health, PodHealth};

/// How sessions are told apart.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionOptions {
    /// The label whose value is the session (default `session`).
    pub session_label: String,
    /// The label whose value is the component (default `component`).
    pub component_label: String,
    /// Each session's channel, in events (default 32).
    pub capacity: usize,
    /// What counts as a crash loop.
    pub crash_loop: CrashLoopRule,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            session_label: "session".into(),
            component_label: "component".into(),
            capacity: 32,
            crash_loop: CrashLoopRule::default(),
        }
    }
}

impl SessionOptions {
    /// Sessions by this label.
    #[must_use]
    pub fn with_session_label(mut self, label: impl Into<String>) -> Self {
        self.session_label = label.into();
        self
    }

    /// Components by this label.
    #[must_use]
    pub fn with_component_label(mut self, label: impl Into<String>) -> Self {
        self.component_label = label.into();
        self
    }

    /// Channels of this many events (at least 1).
    #[must_use]
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }
}

/// Why a session call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionError {
    /// The session already has a subscriber.
    AlreadySubscribed(String),
    /// The session has no subscriber.
    NotSubscribed(String),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::AlreadySubscribed(s) => {
                write!(f, "session {s:?} already has a subscriber")
            }
            SessionError::NotSubscribed(s) => write!(f, "session {s:?} has no subscriber"),
        }
    }
}

impl std::error::Error for SessionError {}

/// One change of one pod of a session.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SessionEvent {
    /// The session.
    pub session: String,
    /// The pod's component label, if it has one.
    pub component: Option<String>,
    /// What happened.
    pub event: Arc<PodLifecycleEvent>,
    /// The pod's primary IP, when it has one.
    pub ip: Option<String>,
    /// The pod's phase and health after the event.
    pub health: PodHealth,
    /// For a failing health, what led to it (the container, its code or
    /// reason).
    pub error: Option<String>,
}

/// What a session's subscriber receives.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum SessionUpdate {
    /// A change of one of the session's pods.
    Event(SessionEvent),
    /// This many events of the session were lost (the subscriber fell
    /// behind, or the runtime's stream lost some); read the pods' state
    /// afresh.
    Resync {
        /// At least this many (exactly, when lagged).
        missed: u64,
        /// Why.
        reason: ResyncReason,
    },
}

/// The live receiver of each session: its token (so that a receiver
/// dropped after its session was unsubscribed and subscribed again leaves
/// the new one alone) and how to tell it it was unsubscribed.
#[derive(Debug, Default)]
struct Receivers {
    next: AtomicU64,
    live: Mutex<HashMap<String, (u64, Arc<Notify>)>>,
}

impl Receivers {
    fn is_live(&self, session: &str, token: u64) -> bool {
        self.live
            .lock()
            .get(session)
            .is_some_and(|(t, _)| *t == token)
    }
}

/// Hands out one channel per session.
#[derive(Clone)]
pub struct SessionWatcher {
    pleg: Pleg,
    options: SessionOptions,
    receivers: Arc<Receivers>,
}

impl fmt::Debug for SessionWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionWatcher")
            .field("options", &self.options)
            .field("sessions", &self.receivers.live.lock().len())
            .finish_non_exhaustive()
    }
}

impl SessionWatcher {
    /// Sessions of this generator's pods.
    pub fn new(pleg: &Pleg, options: SessionOptions) -> Self {
        SessionWatcher {
            pleg: pleg.clone(),
            options,
            receivers: Arc::new(Receivers::default()),
        }
    }

    /// The channel of `session`'s pods.
    ///
    /// # Errors
    /// [`SessionError::AlreadySubscribed`] while another receiver of the
    /// session lives.
    pub fn subscribe(&self, session: &str) -> Result<SessionReceiver, SessionError> {
        self.subscribe_with_capacity(session, self.options.capacity)
    }

    /// The channel of `session`'s pods, holding `capacity` events (at
    /// least 1) in place of the watcher's default.
    ///
    /// # Errors
    /// As [`SessionWatcher::subscribe`].
    pub fn subscribe_with_capacity(
        &self,
        session: &str,
        capacity: usize,
    ) -> Result<SessionReceiver, SessionError> {
        let token = self.receivers.next.fetch_add(1, Ordering::Relaxed);
        let unsubscribed = Arc::new(Notify::new());
        {
            let mut live = self.receivers.live.lock();
            if live.contains_key(session) {
                return Err(SessionError::AlreadySubscribed(session.to_owned()));
            }
            live.insert(session.to_owned(), (token, unsubscribed.clone()));
        }
        let filter = Filter::all().with_label(&self.options.session_label, session);
        // A capacity of at least 1 is always valid.
        let subscription = self
            .pleg
            .subscribe_with(SubscribeOptions::filtered(filter).with_capacity(capacity.max(1)))
            .ok();
        Ok(SessionReceiver {
            session: session.to_owned(),
            token,
            component_label: self.options.component_label.clone(),
            pleg: self.pleg.clone(),
            subscription,
            crash_loops: CrashLoops::new(self.options.crash_loop),
            receivers: self.receivers.clone(),
            unsubscribed,
        })
    }

    /// Ends `session`'s channel: its receiver gets `None` once it has read
    /// what was queued.
    ///
    /// # Errors
    /// [`SessionError::NotSubscribed`] when the session has no receiver.
    pub fn unsubscribe(&self, session: &str) -> Result<(), SessionError> {
        match self.receivers.live.lock().remove(session) {
            Some((_, unsubscribed)) => {
                // A permit, should the receiver not be waiting right now.
                unsubscribed.notify_one();
                Ok(())
            }
            None => Err(SessionError::NotSubscribed(session.to_owned())),
        }
    }

    /// Sessions with a receiver.
    pub fn sessions(&self) -> Vec<String> {
        let mut sessions: Vec<String> = self.receivers.live.lock().keys().cloned().collect();
        sessions.sort();
        sessions
    }
}

/// One session's channel. Dropping it unsubscribes the session.
pub struct SessionReceiver {
    session: String,
    token: u64,
    component_label: String,
    pleg: Pleg,
    subscription: Option<Subscription>,
    crash_loops: CrashLoops,
    receivers: Arc<Receivers>,
    unsubscribed: Arc<Notify>,
}

impl fmt::Debug for SessionReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionReceiver")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl SessionReceiver {
    /// The session.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// The next update; `None` once the session was unsubscribed (after
    /// what was queued) or the generator stopped.
    pub async fn recv(&mut self) -> Option<SessionUpdate> {
        if self.receivers.is_live(&self.session, self.token) {
            let subscription = self.subscription.as_mut()?;
            tokio::select! {
                delivery = subscription.recv() => {
                    if let Some(d) = delivery {
                        return Some(self.update(d));
                    }
                    self.subscription = None;
                    return None;
                }
                () = self.unsubscribed.notified() => {}
            }
        }
        // Unsubscribed: hand out what is queued, then end.
        if let Some(d) = self.subscription.as_mut()?.try_recv() {
            return Some(self.update(d));
        }
        self.subscription = None;
        None
    }

    fn update(&mut self, delivery: Delivery) -> SessionUpdate {
        match delivery {
            // A session asks for no initial state; one would read as events.
            Delivery::Event(event) | Delivery::Initial(event) => {
                self.crash_loops.observe(&event);
                let cached = self.pleg.cache().get(&event.pod.uid);
                let now = self.pleg.clock().now();
                let (health, ip) = match &cached {
                    Some(entry) => (
                        self.crash_loops.health(&entry.status, now),
                        entry.status.ips.first().cloned(),
                    ),
                    None => (
                        PodHealth::of(&crate::model::PodStatus::new(event.pod.clone())),
                        None,
                    ),
                };
                let error = match health.health {
                    Health::Failed | Health::NotReady => health.message.clone(),
                    _ => None,
                };
                SessionUpdate::Event(SessionEvent {
                    session: self.session.clone(),
                    component: event.pod.labels.get(&self.component_label).cloned(),
                    event,
                    ip,
                    health,
                    error,
                })
            }
            Delivery::Resync { missed, reason, .. } => SessionUpdate::Resync { missed, reason },
            // Nothing was lost: a session that catches up reads it as a
            // resync of nothing.
            Delivery::Synced(_) => SessionUpdate::Resync {
                missed: 0,
                reason: ResyncReason::Lagged,
            },
        }
    }
}

impl Drop for SessionReceiver {
    fn drop(&mut self) {
        let mut live = self.receivers.live.lock();
        if live
            .get(&self.session)
            .is_some_and(|(t, _)| *t == self.token)
        {
            live.remove(&self.session);
        }
    }
}

#[cfg(test)]
mod tests;
