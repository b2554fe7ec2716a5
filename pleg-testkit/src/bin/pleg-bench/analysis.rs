//! Ground truth against what the subscriber held: latency, misses,
//! duplicates.
//!
//! Each owed event is keyed by (container or sandbox ID, event type): a
//! container ID is one attempt, so it is started, dies and is removed once
//! at most. A second event of a key is a duplicate; an event of a key the
//! truth does not owe is unexpected. Latency is the time the subscriber held
//! the first event of a key minus the truth's reference time (the call's
//! return, or the runtime's `finished_at` for an exit); it is negative when
//! the event arrived before the driver call returned. Own latency (stream
//! events only) is held minus the CRI event's `created_at`
//! (`runtime_time_unix_nanos` on the wire).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use pleg::{EventSource, EventType};
use serde::Serialize;

use crate::subscriber::Seen;
use crate::truth::{Entry, Transition, Truth};

/// Completeness of one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Completeness {
    /// Events owed (starts, exits, removals).
    pub owed: usize,
    pub matched: usize,
    /// Owed events never seen, other than generic mode's documented
    /// short-lived misses.
    pub missed: usize,
    /// Starts of containers that lived less than the longest gap between
    /// two relists of the run, missed by relisting (documented).
    pub missed_short_lived: usize,
    pub duplicated: usize,
    pub unexpected: usize,
    /// `ContainerDied` whose exit code differs from the runtime's.
    pub exit_code_mismatches: usize,
    /// A few of the misses, duplicates and unexpected events, for people.
    pub examples: Vec<String>,
}

/// Latencies in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latencies {
    /// From the ground truth (all matched events).
    pub truth_ms: Vec<f64>,
    /// From the ground truth, leaving out transitions during an outage.
    pub truth_live_ms: Vec<f64>,
    /// From the CRI event's `created_at` (stream events only).
    pub own_ms: Vec<f64>,
    /// The runtime's part: the CRI event's `created_at` minus the ground
    /// truth (stream events only).
    pub runtime_lag_ms: Vec<f64>,
}

pub fn analyse(
    truth: &[Truth],
    seen: &[Seen],
    short_bound: Option<Duration>,
) -> (Completeness, Latencies) {
    let mut by_key: HashMap<(&str, EventType), Vec<&Seen>> = HashMap::new();
    for s in seen {
        by_key.entry((s.id.as_str(), s.kind)).or_default().push(s);
    }
    let lifetimes: HashMap<&str, Duration> = truth
        .iter()
        .filter(|t| t.transition == Transition::Exited)
        .filter_map(|t| Some((t.id.as_str(), t.lifetime?)))
        .collect();
    let short = short_bound;
    let mut c = Completeness::default();
    let mut l = Latencies::default();
    let mut owed_keys = HashSet::new();
    for t in truth {
        let Some(kind) = t.transition.event() else {
            continue;
        };
        owed_keys.insert((t.id.as_str(), kind));
        c.owed += 1;
        match by_key.get(&(t.id.as_str(), kind)) {
            Some(events) if !events.is_empty() => {
                c.matched += 1;
                let first = events[0];
                let ms = signed_ms(first.held, t.reference());
                l.truth_ms.push(ms);
                if !t.during_outage {
                    l.truth_live_ms.push(ms);
                }
                if first.source == EventSource::Stream
                    && let Some(rt) = first.runtime_time
                {
                    l.own_ms.push(signed_ms(first.held, rt));
                    if !t.during_outage {
                        l.runtime_lag_ms.push(signed_ms(rt, t.reference()));
                    }
                }
                if events.len() > 1 {
                    c.duplicated += events.len() - 1;
                    example(&mut c.examples, || {
                        format!("duplicate: {kind} of {} x{}", short_id(&t.id), events.len())
                    });
                }
                if kind == EventType::ContainerDied
                    && let (Some(want), Some(got)) = (t.exit_code, first.exit_code)
                    && want != got
                {
                    c.exit_code_mismatches += 1;
                    example(&mut c.examples, || {
                        format!(
                            "exit code of {}: {got}, runtime says {want}",
                            short_id(&t.id)
                        )
                    });
                }
            }
            _ => {
                let lived = lifetimes.get(t.id.as_str());
                let documented = kind == EventType::ContainerStarted
                    && t.entry == Entry::Container
                    && matches!((short, lived), (Some(s), Some(l)) if *l < s);
                if documented {
                    c.missed_short_lived += 1;
                } else {
                    c.missed += 1;
                    example(&mut c.examples, || {
                        format!(
                            "missed: {kind} of {:?} {}{}",
                            t.entry,
                            short_id(&t.id),
                            if t.during_outage {
                                " (during the outage)"
                            } else {
                                ""
                            }
                        )
                    });
                }
            }
        }
    }
    for s in seen {
        if !owed_keys.contains(&(s.id.as_str(), s.kind)) {
            c.unexpected += 1;
            example(&mut c.examples, || {
                format!(
                    "unexpected: {} of {} via {}",
                    s.kind,
                    short_id(&s.id),
                    s.source.as_str()
                )
            });
        }
    }
    (c, l)
}

fn example(examples: &mut Vec<String>, text: impl FnOnce() -> String) {
    if examples.len() < 6 {
        examples.push(text());
    }
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// `a - b` in milliseconds, negative when `a` is earlier.
pub fn signed_ms(a: SystemTime, b: SystemTime) -> f64 {
    match a.duration_since(b) {
        Ok(d) => d.as_secs_f64() * 1e3,
        Err(e) => -e.duration().as_secs_f64() * 1e3,
    }
}

/// Percentiles and the like of a sample, in its unit.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

pub fn summarize(values: &[f64]) -> Option<Summary> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        // Nearest rank.
        let rank = (q * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    };
    Some(Summary {
        n: v.len(),
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        max: v[v.len() - 1],
        mean: v.iter().sum::<f64>() / v.len() as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summarize(&v).expect("a sample");
        assert_eq!((s.p50, s.p95, s.p99, s.max), (50.0, 95.0, 99.0, 100.0));
    }
}
