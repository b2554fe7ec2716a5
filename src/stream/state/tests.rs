//! Every transition of the stream's state machine, without a runtime.

use std::time::Duration;

use tokio::time::Instant;

use super::*;

fn config() -> StreamConfig {
    StreamConfig {
        evented_relist: RelistDuration::EVENTED,
        generic_relist: RelistDuration::GENERIC,
        max_failures: 3,
        probe_interval: Duration::from_secs(30),
        stable_after: Duration::from_secs(10),
        gap_relist_interval: Duration::from_secs(1),
        lossy_for: Duration::from_secs(60),
    }
}

fn standing() -> Standing {
    Standing::new(Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).with_jitter(0.0))
}

fn failure(message: &str) -> Failure {
    Failure {
        message: message.into(),
        unimplemented: false,
    }
}

fn streaming(now: Instant) -> State<()> {
    let Transition { next, .. } = step(
        State::Connecting {
            standing: standing(),
            probing: false,
        },
        Input::Opened(()),
        &config(),
        now,
    );
    next
}

fn name<S>(state: &State<S>) -> StreamState {
    state.kind()
}

#[tokio::test(start_paused = true)]
async fn opening_relists_at_the_generic_period_until_the_first_event() {
    let now = Instant::now();
    let Transition { next, actions } = step(
        State::Connecting {
            standing: standing(),
            probing: false,
        },
        Input::Opened(()),
        &config(),
        now,
    );
    assert_eq!(name(&next), StreamState::Streaming);
    assert_eq!(next.standing().mode, Mode::Evented);
    assert_eq!(
        actions,
        [
            Action::Notice(Notice::Connected { promoted: false }),
            Action::SetRelist(RelistDuration::GENERIC),
            Action::Relist(Why::Connected),
        ]
    );
    // The first event: one more relist, then the evented period.
    let Transition { next, actions } = step(
        next,
        Input::Event {
            gap: false,
            lossy: false,
        },
        &config(),
        now,
    );
    assert_eq!(
        actions,
        [
            Action::Relist(Why::FirstEvent),
            Action::SetRelist(RelistDuration::EVENTED)
        ]
    );
    // Later events ask for nothing.
    let Transition { actions, .. } = step(
        next,
        Input::Event {
            gap: false,
            lossy: false,
        },
        &config(),
        now,
    );
    assert!(actions.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_gap_relists_at_most_once_a_second_and_the_tick_catches_up() {
    let start = Instant::now();
    let state = streaming(start);
    let Transition { next, .. } = step(
        state,
        Input::Event {
            gap: false,
            lossy: false,
        },
        &config(),
        start,
    );
    // A gap: relist now.
    let Transition { next, actions } = step(
        next,
        Input::Event {
            gap: true,
            lossy: false,
        },
        &config(),
        start,
    );
    assert_eq!(actions, [Action::Relist(Why::LostEvents)]);
    // Another within the second waits...
    let soon = start + Duration::from_millis(300);
    let Transition { next, actions } = step(
        next,
        Input::Event {
            gap: true,
            lossy: false,
        },
        &config(),
        soon,
    );
    assert!(actions.is_empty());
    let Transition { next, actions } = step(next, Input::Tick, &config(), soon);
    assert_eq!(actions, [Action::AdvanceCacheTime]);
    // ...for the tick after the second.
    let later = start + Duration::from_secs(1);
    let Transition { actions, .. } = step(next, Input::Tick, &config(), later);
    assert_eq!(
        actions,
        [Action::AdvanceCacheTime, Action::Relist(Why::LostEvents)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_loses_events_relists_at_the_generic_period_until_it_lost_none_for_a_minute()
{
    let start = Instant::now();
    let state = streaming(start);
    let Transition { next, .. } = step(
        state,
        Input::Event {
            gap: false,
            lossy: false,
        },
        &config(),
        start,
    );
    // The gap a reconnection explains: a relist, the period stays.
    let Transition { next, actions } = step(
        next,
        Input::Event {
            gap: true,
            lossy: false,
        },
        &config(),
        start,
    );
    assert_eq!(actions, [Action::Relist(Why::LostEvents)]);
    // One that another consumer explains: relisting at the generic period.
    let at = start + Duration::from_secs(2);
    let Transition { next, actions } = step(
        next,
        Input::Event {
            gap: true,
            lossy: true,
        },
        &config(),
        at,
    );
    assert_eq!(
        actions,
        [
            Action::Relist(Why::LostEvents),
            Action::Notice(Notice::Distrusted),
            Action::SetRelist(RelistDuration::GENERIC)
        ]
    );
    // More losses keep it there without asking again.
    let again = at + Duration::from_secs(30);
    let Transition { next, actions } = step(
        next,
        Input::Event {
            gap: true,
            lossy: true,
        },
        &config(),
        again,
    );
    assert_eq!(actions, [Action::Relist(Why::LostEvents)]);
    let Transition { next, actions } = step(
        next,
        Input::Tick,
        &config(),
        again + Duration::from_secs(59),
    );
    assert_eq!(actions, [Action::AdvanceCacheTime]);
    // A minute without a loss: the evented period again.
    let Transition { next, actions } = step(
        next,
        Input::Tick,
        &config(),
        again + Duration::from_secs(60),
    );
    assert_eq!(
        actions,
        [
            Action::AdvanceCacheTime,
            Action::Notice(Notice::Trusted),
            Action::SetRelist(RelistDuration::EVENTED)
        ]
    );
    let Transition { actions, .. } = step(
        next,
        Input::Tick,
        &config(),
        again + Duration::from_secs(61),
    );
    assert_eq!(actions, [Action::AdvanceCacheTime]);
}

#[tokio::test(start_paused = true)]
async fn a_first_event_that_shows_a_loss_leaves_relisting_at_the_generic_period() {
    let start = Instant::now();
    let state = streaming(start);
    let Transition { actions, .. } = step(
        state,
        Input::Event {
            gap: true,
            lossy: true,
        },
        &config(),
        start,
    );
    assert_eq!(
        actions,
        [
            Action::Relist(Why::LostEvents),
            Action::Relist(Why::FirstEvent),
            Action::Notice(Notice::Distrusted),
            Action::SetRelist(RelistDuration::GENERIC)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_growing_then_fall_back_and_probes_promote() {
    let now = Instant::now();
    let mut state: State<()> = State::Connecting {
        standing: standing(),
        probing: false,
    };
    for (failures, delay_ms) in [(1, 100), (2, 200)] {
        let Transition { next, actions } =
            step(state, Input::OpenFailed(failure("refused")), &config(), now);
        let State::Backoff { until, .. } = &next else {
            panic!("backoff after failure {failures}");
        };
        assert_eq!(*until, now + Duration::from_millis(delay_ms));
        assert_eq!(
            actions,
            [Action::Notice(Notice::Retrying {
                failure: failure("refused"),
                failures,
                retry_in: Duration::from_millis(delay_ms),
            })]
        );
        assert_eq!(next.standing().last_error.as_deref(), Some("refused"));
        let Transition { next, actions } = step(next, Input::Deadline, &config(), now);
        assert!(actions.is_empty());
        assert!(matches!(next, State::Connecting { probing: false, .. }));
        state = next;
    }
    // The third failure in a row: relisting takes over.
    let Transition { next, actions } =
        step(state, Input::OpenFailed(failure("refused")), &config(), now);
    let State::Fallback { next_probe, .. } = &next else {
        panic!("fallback");
    };
    assert_eq!(*next_probe, now + Duration::from_secs(30));
    assert_eq!(next.standing().mode, Mode::Generic);
    assert_eq!(
        actions,
        [
            Action::Notice(Notice::FellBack {
                failure: failure("refused"),
                failures: 3
            }),
            Action::SetRelist(RelistDuration::GENERIC),
        ]
    );
    // A failed probe goes back to fallback, quietly.
    let Transition { next, .. } = step(next, Input::Deadline, &config(), now);
    assert!(matches!(next, State::Connecting { probing: true, .. }));
    let Transition { next, actions } = step(
        next,
        Input::OpenFailed(failure("still refused")),
        &config(),
        now,
    );
    assert_eq!(name(&next), StreamState::Fallback);
    assert_eq!(
        actions,
        [Action::Notice(Notice::ProbeFailed {
            failure: failure("still refused")
        })]
    );
    // A probe that works promotes.
    let Transition { next, .. } = step(next, Input::Deadline, &config(), now);
    let Transition { next, actions } = step(next, Input::Opened(()), &config(), now);
    assert_eq!(name(&next), StreamState::Streaming);
    assert_eq!(next.standing().mode, Mode::Evented);
    assert_eq!(next.standing().failures, 0);
    assert_eq!(
        actions[0],
        Action::Notice(Notice::Connected { promoted: true })
    );
}

#[tokio::test(start_paused = true)]
async fn unimplemented_falls_back_at_once() {
    let now = Instant::now();
    let Transition { next, actions } = step(
        State::<()>::Connecting {
            standing: standing(),
            probing: false,
        },
        Input::OpenFailed(Failure {
            message: "no".into(),
            unimplemented: true,
        }),
        &config(),
        now,
    );
    assert_eq!(name(&next), StreamState::Fallback);
    assert!(matches!(
        actions[0],
        Action::Notice(Notice::FellBack { failures: 1, .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_ends_backs_off_and_a_stable_one_resets_the_count_first() {
    let start = Instant::now();
    // Failures before the stream opened are forgotten at connection.
    let state = streaming(start);
    let Transition { next, .. } = step(state, Input::Ended(failure("cut")), &config(), start);
    assert_eq!(name(&next), StreamState::Backoff);
    assert_eq!(next.standing().failures, 1);
    assert_eq!(
        next.standing().mode,
        Mode::Evented,
        "still evented while reconnecting"
    );

    let state = streaming(start);
    let late = start + Duration::from_secs(10);
    let Transition { next, .. } = step(state, Input::Ended(failure("cut")), &config(), late);
    let State::Backoff { until, .. } = next else {
        panic!("backoff");
    };
    assert_eq!(
        until,
        late + Duration::from_millis(100),
        "the shortest delay"
    );
}

#[tokio::test(start_paused = true)]
async fn unexpected_inputs_change_nothing() {
    let now = Instant::now();
    let Transition { next, actions } = step(
        State::<()>::Backoff {
            standing: standing(),
            until: now,
        },
        Input::Tick,
        &config(),
        now,
    );
    assert_eq!(name(&next), StreamState::Backoff);
    assert!(actions.is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_runtime_coming_back_ends_a_backoff_or_a_failure_fallback_at_once() {
    let now = Instant::now();
    let mut backoff = standing();
    backoff.failures = 2;
    let Transition { next, actions } = step(
        State::<()>::Backoff {
            standing: backoff,
            until: now + Duration::from_secs(5),
        },
        Input::RuntimeBack,
        &config(),
        now,
    );
    assert_eq!(name(&next), StreamState::Connecting);
    assert!(actions.is_empty());

    // A fallback after failures: probe now.
    let Transition { next, .. } = step(
        State::<()>::Connecting {
            standing: Standing {
                failures: 2,
                ..standing()
            },
            probing: false,
        },
        Input::OpenFailed(failure("connection refused")),
        &config(),
        now,
    );
    assert_eq!(name(&next), StreamState::Fallback);
    let Transition { next, .. } = step(next, Input::RuntimeBack, &config(), now);
    assert!(
        matches!(next, State::Connecting { probing: true, .. }),
        "probing at once"
    );

    // A runtime without a stream (containerd 1.6) keeps its probe schedule.
    let Transition { next, .. } = step(
        State::<()>::Connecting {
            standing: standing(),
            probing: false,
        },
        Input::OpenFailed(Failure {
            message: "unimplemented".into(),
            unimplemented: true,
        }),
        &config(),
        now,
    );
    assert_eq!(name(&next), StreamState::Fallback);
    let Transition { next, actions } = step(next, Input::RuntimeBack, &config(), now);
    assert_eq!(name(&next), StreamState::Fallback);
    assert!(actions.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_new_stream_with_no_event_slows_to_the_quiet_period_once_and_the_first_event_still_counts()
 {
    let now = Instant::now();
    let state = streaming(now);
    let quiet = config().quiet_relist();
    assert_eq!(quiet.relist_period, Duration::from_secs(10));
    // Before stable_after: only the cache tick.
    let Transition { next, actions } =
        step(state, Input::Tick, &config(), now + Duration::from_secs(5));
    assert_eq!(actions, vec![Action::AdvanceCacheTime]);
    // Past it: the quiet period, once.
    let Transition { next, actions } =
        step(next, Input::Tick, &config(), now + Duration::from_secs(10));
    assert_eq!(
        actions,
        vec![Action::AdvanceCacheTime, Action::SetRelist(quiet)]
    );
    let Transition { next, actions } =
        step(next, Input::Tick, &config(), now + Duration::from_secs(11));
    assert_eq!(actions, vec![Action::AdvanceCacheTime]);
    // The first event still brings its relist and the evented period.
    let Transition { actions, .. } = step(
        next,
        Input::Event {
            gap: false,
            lossy: false,
        },
        &config(),
        now + Duration::from_secs(12),
    );
    assert_eq!(
        actions,
        vec![
            Action::Relist(Why::FirstEvent),
            Action::SetRelist(RelistDuration::EVENTED)
        ]
    );
}
