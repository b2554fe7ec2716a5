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
    /// Events of containers pleg never listed: their whole existence
    /// (creation to removal, less any runtime outage) was shorter than the
    /// longest gap between two relists, so no relist saw them (documented,
    /// generic mode only).
    pub missed_never_listed: usize,
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
    /// `truth_live_ms` of exits only (measured from the runtime's
    /// `finished_at`, so containerd's own handling of the exit is inside).
    pub truth_live_exits_ms: Vec<f64>,
    /// `truth_live_ms` of the rest: starts and removals, measured from the
    /// driver call's return.
    pub truth_live_calls_ms: Vec<f64>,
    /// From the CRI event's `created_at` (stream events only).
    pub own_ms: Vec<f64>,
    /// The runtime's part: the CRI event's `created_at` minus the ground
    /// truth (stream events only).
    pub runtime_lag_ms: Vec<f64>,
}

/// `outage` is when the runtime was down (the restart scenario): no relist
/// can look then, so it does not count toward an existence.
pub fn analyse(
    truth: &[Truth],
    seen: &[Seen],
    short_bound: Option<Duration>,
    outage: Option<(SystemTime, SystemTime)>,
) -> (Completeness, Latencies) {
    let mut by_key: HashMap<(&str, EventType), Vec<&Seen>> = HashMap::new();
    for s in seen {
        by_key.entry((s.id.as_str(), s.kind)).or_default().push(s);
    }
    let held_ids: HashSet<&str> = seen.iter().map(|s| s.id.as_str()).collect();
    let never_listed = never_listed(truth, &held_ids, short_bound, outage);
    // How long each container ran where a relist could see it: from its
    // start to its `finished_at`, less any overlap with the outage (no
    // relist can list while the runtime is down).
    let lifetimes: HashMap<&str, Duration> = truth
        .iter()
        .filter(|t| t.transition == Transition::Exited)
        .filter_map(|t| {
            let lived = t.lifetime?;
            let down = match (outage, t.finished_at) {
                (Some(o), Some(end)) => end
                    .checked_sub(lived)
                    .map_or(Duration::ZERO, |start| overlap((start, end), o)),
                _ => Duration::ZERO,
            };
            Some((t.id.as_str(), lived.saturating_sub(down)))
        })
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
                    if t.transition == Transition::Exited {
                        l.truth_live_exits_ms.push(ms);
                    } else {
                        l.truth_live_calls_ms.push(ms);
                    }
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
                if never_listed.contains(t.id.as_str()) {
                    c.missed_never_listed += 1;
                } else if documented {
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

/// IDs that reached the subscriber in no event at all and existed (from
/// the first call about them to their removal, less the outage) for less
/// than `bound`: no relist can have listed them.
fn never_listed<'a>(
    truth: &'a [Truth],
    held: &HashSet<&str>,
    bound: Option<Duration>,
    outage: Option<(SystemTime, SystemTime)>,
) -> HashSet<&'a str> {
    let Some(bound) = bound else {
        return HashSet::new();
    };
    let mut spans: HashMap<&str, (SystemTime, Option<SystemTime>)> = HashMap::new();
    for t in truth {
        let span = spans
            .entry(t.id.as_str())
            .or_insert((t.call_returned, None));
        span.0 = span.0.min(t.call_returned);
        if t.transition == Transition::Removed {
            span.1 = Some(t.call_returned);
        }
    }
    spans
        .into_iter()
        .filter(|(id, _)| !held.contains(id))
        .filter_map(|(id, (from, to))| {
            let to = to?;
            let existed = to.duration_since(from).ok()?;
            let down = outage.map_or(Duration::ZERO, |(a, b)| overlap((from, to), (a, b)));
            (existed.saturating_sub(down) < bound).then_some(id)
        })
        .collect()
}

/// How long two time spans overlap.
fn overlap(a: (SystemTime, SystemTime), b: (SystemTime, SystemTime)) -> Duration {
    let from = a.0.max(b.0);
    let to = a.1.min(b.1);
    to.duration_since(from).unwrap_or(Duration::ZERO)
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

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_000 + ms)
    }

    fn truth(id: &str, transition: Transition, ms: u64) -> Truth {
        Truth {
            id: id.into(),
            entry: Entry::Container,
            transition,
            call_returned: at(ms),
            finished_at: None,
            lifetime: None,
            exit_code: None,
            during_outage: false,
        }
    }

    /// `truth`, for where a local of that name hides it.
    fn transition_at(id: &str, transition: Transition, ms: u64) -> Truth {
        truth(id, transition, ms)
    }

    fn lifecycle(id: &str, created: u64, removed: u64) -> Vec<Truth> {
        vec![
            truth(id, Transition::Created, created),
            truth(id, Transition::Started, created + 50),
            truth(id, Transition::Exited, created + 100),
            truth(id, Transition::Removed, removed),
        ]
    }

    fn held(id: &str, kind: EventType, ms: u64) -> Seen {
        Seen {
            id: id.into(),
            kind,
            exit_code: None,
            source: EventSource::Relist,
            runtime_time: None,
            held: at(ms),
        }
    }

    #[test]
    fn a_container_no_relist_could_list_is_a_documented_miss_and_one_it_could_is_not() {
        let bound = Some(Duration::from_millis(1_100));
        let mut truth = lifecycle("brief", 0, 800);
        // Existed 5 s: a relist listed it, so losing its death is a miss.
        truth.extend(lifecycle("listed", 0, 5_000));
        // Existed 9 s, 8.5 s of them while the runtime was down.
        truth.extend(lifecycle("outage", 10_000, 19_000));
        let seen = vec![held("listed", EventType::ContainerStarted, 300)];
        let outage = Some((at(10_200), at(18_700)));
        let (c, _) = analyse(&truth, &seen, bound, outage);
        assert_eq!(c.owed, 9);
        assert_eq!(c.matched, 1);
        assert_eq!(c.missed_never_listed, 6, "{c:?}");
        assert_eq!(c.missed, 2, "{c:?}");
        // Without the outage, the third one existed too long to be missed.
        let (c, _) = analyse(&truth, &seen, bound, None);
        assert_eq!((c.missed_never_listed, c.missed), (3, 5), "{c:?}");
        // A start lost where the container ran only while the runtime was
        // down (listed created before, exited after) is documented too.
        let mut outage_run = truth.clone();
        let mut started = transition_at("ran-in-outage", Transition::Created, 9_000);
        started.transition = Transition::Started;
        let mut exited = transition_at("ran-in-outage", Transition::Exited, 18_900);
        exited.finished_at = Some(at(18_650));
        exited.lifetime = Some(Duration::from_millis(8_600));
        outage_run.extend([
            transition_at("ran-in-outage", Transition::Created, 8_900),
            started,
            exited,
            transition_at("ran-in-outage", Transition::Removed, 19_100),
        ]);
        let mut seen_outage = seen.clone();
        seen_outage.push(held("ran-in-outage", EventType::ContainerDied, 19_000));
        seen_outage.push(held("ran-in-outage", EventType::ContainerRemoved, 20_000));
        let (c, _) = analyse(&outage_run, &seen_outage, bound, outage);
        assert_eq!((c.missed_short_lived, c.missed), (1, 2), "{c:?}");
        let (c, _) = analyse(&outage_run, &seen_outage, bound, None);
        assert_eq!(c.missed_short_lived, 0, "{c:?}");
        // Evented mode documents no miss.
        let (c, _) = analyse(&truth, &seen, None, outage);
        assert_eq!((c.missed_never_listed, c.missed), (0, 8), "{c:?}");
    }
}
