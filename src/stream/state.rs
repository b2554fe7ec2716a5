//! The stream's state machine: one enum, one `step`.
//!
//! [`step`] takes a state and what just happened, and returns the next
//! state and the actions it wants (relist now, change the relist period,
//! advance the cache's time, and notices for counters and logs). It does no
//! I/O and reads no clock: the driver ([`super::driver`]) waits for the
//! input the state calls for, carries the actions out, and publishes the
//! status. So every transition is tested on its own, without a runtime.

use std::time::Duration;

use tokio::time::Instant;

use super::{Mode, StreamState};
use crate::backoff::Backoff;
use crate::health::RelistDuration;
use crate::naming::named_enum;

/// How the stream is driven (validated by the generator's configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StreamConfig {
    /// Relist period and threshold while the stream works.
    pub(crate) evented_relist: RelistDuration,
    /// Relist period and threshold while relisting is in charge.
    pub(crate) generic_relist: RelistDuration,
    /// Failures in a row after which relisting takes over.
    pub(crate) max_failures: u32,
    /// How often the stream is probed while relisting is in charge.
    pub(crate) probe_interval: Duration,
    /// A stream that lived this long resets the failure count when it ends.
    pub(crate) stable_after: Duration,
    /// Gap relists are at most this often.
    pub(crate) gap_relist_interval: Duration,
    /// A stream that lost events is not trusted until it has lost none for
    /// this long: meanwhile relisting keeps the generic period.
    pub(crate) lossy_for: Duration,
}

impl StreamConfig {
    /// Relisting while a new stream has had no event for `stable_after`:
    /// every [`QUIET_RELIST_PERIOD`] (or the evented period, if shorter),
    /// with the generic threshold.
    pub(crate) fn quiet_relist(&self) -> RelistDuration {
        RelistDuration::new(
            QUIET_RELIST_PERIOD.min(self.evented_relist.relist_period),
            self.generic_relist.relist_threshold,
        )
    }
}

/// The relist period of a new stream that has had no event yet, once it
/// has been open for `stable_after`.
pub(crate) const QUIET_RELIST_PERIOD: Duration = Duration::from_secs(10);

/// What every state carries along.
#[derive(Clone, Debug)]
pub(crate) struct Standing {
    /// Which generator is in charge.
    pub(crate) mode: Mode,
    /// Failures in a row.
    pub(crate) failures: u32,
    /// The last stream error.
    pub(crate) last_error: Option<String>,
    /// The reconnection delays.
    pub(crate) backoff: Backoff,
    /// The runtime said it has no event stream (containerd 1.6).
    pub(crate) unimplemented: bool,
}

impl Standing {
    /// Before the first connection: relisting in charge, no failure yet.
    pub(crate) fn new(backoff: Backoff) -> Self {
        Standing {
            mode: Mode::Generic,
            failures: 0,
            last_error: None,
            backoff,
            unimplemented: false,
        }
    }
}

/// Lost events waiting for a relist, which runs at most once per
/// [`StreamConfig::gap_relist_interval`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Gap {
    /// An event showed lost predecessors; no relist has looked since.
    pub(crate) pending: bool,
    /// When a gap last brought a relist.
    pub(crate) last_relist: Option<Instant>,
    /// When the stream last lost events, while relisting is at the generic
    /// period for it; `None` while the stream is trusted.
    pub(crate) lossy_since: Option<Instant>,
}

/// The stream's states, each holding what it needs. `S` is the open
/// stream (the driver's; `()` in tests).
pub(crate) enum State<S> {
    /// Opening the stream. `probing` when relisting is in charge after a
    /// fallback: a failure then goes back to [`State::Fallback`] at once.
    /// Success goes to [`State::Streaming`], after a relist (CRI has no
    /// resume token: whatever happened while no stream was open is found by
    /// diffing); a failure to [`State::Backoff`], or to [`State::Fallback`]
    /// after `max_failures` in a row or at once for `Unimplemented`.
    Connecting { standing: Standing, probing: bool },
    /// Receiving events since `since`. Until the first event arrives,
    /// relisting keeps the generic period; the first event brings one more
    /// relist and the evented period: containerd 1.7 leaves the handler of a
    /// closed stream waiting on its shared event channel until it has taken,
    /// and lost, one more event, so the first events after a reconnection
    /// may reach nobody. The stream's end or error goes to
    /// [`State::Backoff`] (or [`State::Fallback`]).
    Streaming {
        standing: Standing,
        stream: S,
        since: Instant,
        awaiting_first_event: bool,
        /// The stream has been quiet since it opened for `stable_after`:
        /// relisting went from the generic period to the quiet one.
        quiet: bool,
        gap: Gap,
    },
    /// Waiting until `until` before connecting again.
    Backoff { standing: Standing, until: Instant },
    /// Relisting at the generic period; the stream is probed at
    /// `next_probe`. Unlike the kubelet's, the fallback is not for good.
    Fallback {
        standing: Standing,
        next_probe: Instant,
    },
}

impl<S> State<S> {
    /// The state's name, for the status.
    pub(crate) fn kind(&self) -> StreamState {
        match self {
            State::Connecting { .. } => StreamState::Connecting,
            State::Streaming { .. } => StreamState::Streaming,
            State::Backoff { .. } => StreamState::Backoff,
            State::Fallback { .. } => StreamState::Fallback,
        }
    }

    /// What the state carries along.
    pub(crate) fn standing(&self) -> &Standing {
        match self {
            State::Connecting { standing, .. }
            | State::Streaming { standing, .. }
            | State::Backoff { standing, .. }
            | State::Fallback { standing, .. } => standing,
        }
    }
}

/// Why opening or reading the stream failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    /// For the status and the logs.
    pub(crate) message: String,
    /// The runtime has no event stream (containerd 1.6).
    pub(crate) unimplemented: bool,
}

/// What happened, for [`step`].
pub(crate) enum Input<S> {
    /// The stream is open.
    Opened(S),
    /// Opening the stream failed.
    OpenFailed(Failure),
    /// An event was applied; `gap` when it showed lost predecessors,
    /// `lossy` when that loss is more than a reconnection explains (see
    /// [`State::Streaming`]).
    Event { gap: bool, lossy: bool },
    /// The stream broke or ended.
    Ended(Failure),
    /// The cache tick (while streaming).
    Tick,
    /// The state's deadline passed (backoff, probe).
    Deadline,
    /// The runtime answers again after failing (a relist succeeded): try
    /// the stream now rather than at the deadline, unless the runtime has
    /// none.
    RuntimeBack,
}

named_enum! {
    /// Why a relist is asked for.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Why {
        /// A stream was opened: find what happened while none was.
        Connected = "event stream connected",
        /// The first event on a new stream: find what reached another handler.
        FirstEvent = "first event on a new stream",
        /// An event showed that the stream lost earlier ones.
        LostEvents = "the event stream lost events",
    }
}

/// Something worth counting and saying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Notice {
    /// A stream was opened; `promoted` when it ends a fallback.
    Connected { promoted: bool },
    /// Opening or reading the stream failed; the driver retries in
    /// `retry_in`.
    Retrying {
        failure: Failure,
        failures: u32,
        retry_in: Duration,
    },
    /// A probe of the stream failed; relisting stays in charge.
    ProbeFailed { failure: Failure },
    /// Relisting takes over.
    FellBack { failure: Failure, failures: u32 },
    /// The stream lost events: relisting goes to the generic period.
    Distrusted,
    /// The stream lost nothing for `lossy_for`: the evented period again.
    Trusted,
}

/// What the driver is to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Count and log.
    Notice(Notice),
    /// Relist now (and wait for it).
    Relist(Why),
    /// Set the relist period and threshold.
    SetRelist(RelistDuration),
    /// Declare the cache fresh as of now.
    AdvanceCacheTime,
}

/// The next state and what to do on the way.
pub(crate) struct Transition<S> {
    pub(crate) next: State<S>,
    pub(crate) actions: Vec<Action>,
}

/// One transition. Inputs a state does not expect leave it as it is.
// One arm per transition: the state machine is meant to be read whole.
#[allow(clippy::too_many_lines)]
pub(crate) fn step<S>(
    state: State<S>,
    input: Input<S>,
    config: &StreamConfig,
    now: Instant,
) -> Transition<S> {
    match (state, input) {
        (
            State::Connecting {
                mut standing,
                probing,
            },
            Input::Opened(stream),
        ) => {
            standing.mode = Mode::Evented;
            standing.failures = 0;
            standing.unimplemented = false;
            standing.backoff.reset();
            Transition {
                next: State::Streaming {
                    standing,
                    stream,
                    since: now,
                    awaiting_first_event: true,
                    quiet: false,
                    gap: Gap::default(),
                },
                // Until the stream's first event, relisting keeps the
                // generic period (see `State::Streaming`).
                actions: vec![
                    Action::Notice(Notice::Connected { promoted: probing }),
                    Action::SetRelist(config.generic_relist),
                    Action::Relist(Why::Connected),
                ],
            }
        }
        (State::Connecting { standing, probing }, Input::OpenFailed(failure)) => {
            failed(standing, failure, probing, config, now)
        }
        (
            State::Streaming {
                standing,
                stream,
                since,
                awaiting_first_event,
                quiet: _,
                mut gap,
            },
            Input::Event { gap: lost, lossy },
        ) => {
            gap.pending |= lost;
            let mut actions = Vec::new();
            relist_after_gap(&mut gap, config, now, &mut actions);
            let was_lossy = gap.lossy_since.is_some();
            if lossy {
                gap.lossy_since = Some(now);
            }
            if awaiting_first_event {
                actions.push(Action::Relist(Why::FirstEvent));
            }
            // A stream that loses events (containerd 1.7 gives each to one
            // stream: another consumer takes some) cannot be waited on for
            // what it may lose next unseen, such as the removal of a
            // container whose pod pleg then hears nothing else of: relisting
            // at the generic period finds that within a period, until the
            // stream has lost nothing for `lossy_for`. The one event a
            // reconnection loses does not count (the stream is whole after
            // it, and relisting every second for a minute after each
            // reconnection would report what the stream is about to).
            if lossy && !was_lossy {
                actions.push(Action::Notice(Notice::Distrusted));
            }
            if awaiting_first_event || gap.lossy_since.is_some() != was_lossy {
                actions.push(Action::SetRelist(if gap.lossy_since.is_some() {
                    config.generic_relist
                } else {
                    config.evented_relist
                }));
            }
            Transition {
                next: State::Streaming {
                    standing,
                    stream,
                    since,
                    awaiting_first_event: false,
                    quiet: false,
                    gap,
                },
                actions,
            }
        }
        (
            State::Streaming {
                standing,
                stream,
                since,
                awaiting_first_event,
                mut quiet,
                mut gap,
            },
            Input::Tick,
        ) => {
            let mut actions = vec![Action::AdvanceCacheTime];
            relist_after_gap(&mut gap, config, now, &mut actions);
            if gap
                .lossy_since
                .is_some_and(|at| now.saturating_duration_since(at) >= config.lossy_for)
            {
                gap.lossy_since = None;
                actions.push(Action::Notice(Notice::Trusted));
                actions.push(Action::SetRelist(config.evented_relist));
            }
            // A quiet node: no first event for `stable_after`. Relisting
            // every second until something happens would cost the most
            // where nothing happens, so it slows to the quiet period; the
            // event a closed stream's handler may take is still found
            // within that period.
            if awaiting_first_event
                && !quiet
                && now.saturating_duration_since(since) >= config.stable_after
            {
                quiet = true;
                actions.push(Action::SetRelist(config.quiet_relist()));
            }
            Transition {
                next: State::Streaming {
                    standing,
                    stream,
                    since,
                    awaiting_first_event,
                    quiet,
                    gap,
                },
                actions,
            }
        }
        (
            State::Streaming {
                mut standing,
                since,
                ..
            },
            Input::Ended(failure),
        ) => {
            if now.saturating_duration_since(since) >= config.stable_after {
                standing.failures = 0;
                standing.backoff.reset();
            }
            failed(standing, failure, false, config, now)
        }
        // The backoff is over, or the runtime is back (say, restarted):
        // reconnect; in the second case at once, so that no relist-only
        // window follows a restart.
        (State::Backoff { standing, .. }, Input::Deadline | Input::RuntimeBack) => Transition {
            next: State::Connecting {
                standing,
                probing: false,
            },
            actions: Vec::new(),
        },
        (State::Fallback { standing, .. }, Input::Deadline) => Transition {
            next: State::Connecting {
                standing,
                probing: true,
            },
            actions: Vec::new(),
        },
        // After a fallback for failures (not for a runtime without a
        // stream), the runtime answering again is worth a probe at once.
        (State::Fallback { standing, .. }, Input::RuntimeBack) if !standing.unimplemented => {
            Transition {
                next: State::Connecting {
                    standing,
                    probing: true,
                },
                actions: Vec::new(),
            }
        }
        (state, _) => Transition {
            next: state,
            actions: Vec::new(),
        },
    }
}

/// Relists when the stream lost events, at most once per
/// `gap_relist_interval` (the cache tick retries a gap that came sooner).
fn relist_after_gap(gap: &mut Gap, config: &StreamConfig, now: Instant, actions: &mut Vec<Action>) {
    if !gap.pending
        || gap
            .last_relist
            .is_some_and(|at| now.saturating_duration_since(at) < config.gap_relist_interval)
    {
        return;
    }
    gap.pending = false;
    gap.last_relist = Some(now);
    actions.push(Action::Relist(Why::LostEvents));
}

/// Opening or reading the stream failed: back off, or fall back.
fn failed<S>(
    mut standing: Standing,
    failure: Failure,
    probing: bool,
    config: &StreamConfig,
    now: Instant,
) -> Transition<S> {
    standing.failures = standing.failures.saturating_add(1);
    standing.last_error = Some(failure.message.clone());
    standing.unimplemented = failure.unimplemented;
    let next_probe = now + config.probe_interval;
    if probing {
        return Transition {
            next: State::Fallback {
                standing,
                next_probe,
            },
            actions: vec![Action::Notice(Notice::ProbeFailed { failure })],
        };
    }
    if failure.unimplemented || standing.failures >= config.max_failures {
        standing.mode = Mode::Generic;
        let failures = standing.failures;
        return Transition {
            next: State::Fallback {
                standing,
                next_probe,
            },
            actions: vec![
                Action::Notice(Notice::FellBack { failure, failures }),
                Action::SetRelist(config.generic_relist),
            ],
        };
    }
    let retry_in = standing.backoff.next_delay();
    let failures = standing.failures;
    Transition {
        next: State::Backoff {
            standing,
            until: now + retry_in,
        },
        actions: vec![Action::Notice(Notice::Retrying {
            failure,
            failures,
            retry_in,
        })],
    }
}

#[cfg(test)]
mod tests;
