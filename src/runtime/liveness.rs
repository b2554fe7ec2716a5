//! Whether the runtime answers: what [`Instrumented`](super::Instrumented)
//! learns from every call it makes, for health.
//!
//! A call *answered* when the runtime sent something back: a result, or an
//! error status of its own (`NotFound`, `Internal`, ...). A timeout, or a
//! transport failure (`Unavailable`, `Cancelled`, `Unknown` without a
//! status), is no answer. From that, [`Liveness::silence`] tells how long
//! the runtime has kept quiet while pleg was waiting on it: since the start
//! of the oldest call that is still pending or ended unanswered, counted
//! from no earlier than the runtime's last answer. A long call beside
//! calls that are answered is no silence; a runtime that lets every call
//! hang (SIGSTOP, a deadlock) is.
//!
//! The event stream's opening call is not tracked: containerd holds it
//! open, unanswered, until something happens on the node.

use std::collections::BTreeMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::{Error, Operation, Result};

/// What the runtime's answers, and silences, have been.
#[derive(Debug, Default)]
pub struct Liveness {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The last time the runtime answered a call.
    last_answer: Option<Instant>,
    /// Calls in flight, by sequence number: when they started, and what.
    pending: BTreeMap<u64, (Instant, Operation)>,
    next: u64,
    /// The start of the earliest call since the last answer that ended
    /// without one, and what it was.
    unanswered_since: Option<(Instant, Operation)>,
}

/// How long the runtime has kept quiet, and on what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Silence {
    /// Since when pleg has waited for an answer.
    pub since: Instant,
    /// The call waited on longest.
    pub operation: Operation,
    /// Whether that call is still pending (otherwise it ended unanswered).
    pub pending: bool,
}

impl Silence {
    /// How long, as of `now`.
    pub fn duration(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.since)
    }
}

/// A call in flight; it leaves the pending set when dropped (a call
/// abandoned half-way is neither an answer nor a silence).
pub(crate) struct InFlight<'a> {
    liveness: &'a Liveness,
    number: u64,
    started: Instant,
    operation: Operation,
}

impl Liveness {
    /// Notes that a call starts.
    pub(crate) fn start(&self, operation: Operation) -> InFlight<'_> {
        let started = Instant::now();
        let mut state = self.state.lock();
        let number = state.next;
        state.next = state.next.wrapping_add(1);
        state.pending.insert(number, (started, operation));
        InFlight {
            liveness: self,
            number,
            started,
            operation,
        }
    }

    /// Notes an answer that came outside a tracked call (an event on the
    /// stream, say).
    pub fn answered(&self) {
        let mut state = self.state.lock();
        state.last_answer = Some(Instant::now());
        state.unanswered_since = None;
    }

    /// The last time the runtime answered anything.
    pub fn last_answer(&self) -> Option<Instant> {
        self.state.lock().last_answer
    }

    /// How long the runtime has kept quiet while pleg waited on it; `None`
    /// when pleg waits on nothing and the last call was answered.
    pub fn silence(&self) -> Option<Silence> {
        let state = self.state.lock();
        let floor = state.last_answer;
        let pending = state
            .pending
            .values()
            .min_by_key(|(at, _)| *at)
            .map(|&(at, op)| Silence {
                since: floor.map_or(at, |answer| answer.max(at)),
                operation: op,
                pending: true,
            });
        let ended = state.unanswered_since.map(|(at, op)| Silence {
            since: at,
            operation: op,
            pending: false,
        });
        match (pending, ended) {
            (Some(p), Some(e)) => Some(if e.since <= p.since { e } else { p }),
            (p, e) => p.or(e),
        }
    }
}

impl InFlight<'_> {
    /// Notes how the call ended.
    pub(crate) fn finish<T>(self, result: &Result<T>) {
        let mut state = self.liveness.state.lock();
        state.pending.remove(&self.number);
        if is_answer(result) {
            state.last_answer = Some(Instant::now());
            state.unanswered_since = None;
        } else if state
            .last_answer
            .is_none_or(|answer| answer <= self.started)
        {
            let earliest = match state.unanswered_since {
                Some((at, op)) if at <= self.started => (at, op),
                _ => (self.started, self.operation),
            };
            state.unanswered_since = Some(earliest);
        }
        drop(state);
        std::mem::forget(self);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.liveness.state.lock().pending.remove(&self.number);
    }
}

/// Whether a call's outcome came from the runtime itself.
fn is_answer<T>(result: &Result<T>) -> bool {
    match result {
        Ok(_) | Err(Error::Unimplemented { .. }) => true,
        Err(Error::Timeout { .. }) => false,
        Err(e) => !matches!(
            e.code(),
            tonic::Code::Unavailable
                | tonic::Code::Cancelled
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unknown
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout() -> Result<()> {
        Err(Error::Timeout {
            call: Operation::Probe.into(),
            after: Duration::from_secs(5),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn silence_runs_from_the_first_unanswered_call_after_the_last_answer() {
        let live = Liveness::default();
        assert_eq!(live.silence(), None, "nothing asked yet");
        live.start(Operation::ListPods).finish(&Ok(()));
        let answered = live.last_answer().expect("answered");
        assert_eq!(live.silence(), None);

        tokio::time::advance(Duration::from_secs(1)).await;
        let first = Instant::now();
        live.start(Operation::Probe).finish(&timeout());
        tokio::time::advance(Duration::from_secs(5)).await;
        let hung = live.start(Operation::ListPods);
        tokio::time::advance(Duration::from_secs(7)).await;
        let silence = live.silence().expect("quiet");
        assert_eq!(silence.since, first, "from the first unanswered call");
        assert_eq!(silence.operation, Operation::Probe);
        assert_eq!(silence.duration(Instant::now()), Duration::from_secs(12));
        assert!(answered < first);

        // An answer ends the silence, even while an older call still hangs:
        // that call counts again from the answer on.
        live.start(Operation::Probe).finish(&Ok(()));
        assert_eq!(
            live.silence().map(|s| s.duration(Instant::now())),
            Some(Duration::ZERO)
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        let silence = live.silence().expect("the hung call");
        assert!(silence.pending);
        assert_eq!(silence.operation, Operation::ListPods);
        assert_eq!(silence.duration(Instant::now()), Duration::from_secs(3));
        drop(hung);
        assert_eq!(live.silence(), None, "an abandoned call is forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_status_is_an_answer_and_a_transport_failure_is_not() {
        let live = Liveness::default();
        let not_found: Result<()> = Err(Error::Failed {
            call: Operation::PodStatus.into(),
            code: tonic::Code::NotFound,
            message: "gone".into(),
            source: None,
        });
        live.start(Operation::PodStatus).finish(&not_found);
        assert!(live.last_answer().is_some());
        assert_eq!(live.silence(), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        let unavailable: Result<()> = Err(Error::Failed {
            call: Operation::ListPods.into(),
            code: tonic::Code::Unavailable,
            message: "connection refused".into(),
            source: None,
        });
        live.start(Operation::ListPods).finish(&unavailable);
        assert!(live.silence().is_some_and(|s| !s.pending));
        live.answered();
        assert_eq!(live.silence(), None);
    }
}
