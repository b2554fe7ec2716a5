//! The four pure steps of applying a stream event, each on its own table.

// Tables read top to bottom, however long; the fixtures wrap what the
// tables hold.
#![allow(
    clippy::too_many_lines,
    clippy::unnecessary_wraps,
    clippy::items_after_statements
)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::model::{Container, ContainerState::*, Pod, PodMeta};
use crate::runtime::SandboxSnapshot;

use ContainerEventKind::{Deleted, Started, Stopped};

const CREATED: ContainerEventKind = ContainerEventKind::Created;

fn t(secs: u64) -> Option<SystemTime> {
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

#[test]
fn classify_follows_the_stale_rules_in_order() {
    let fresh_pod = |subject| {
        Some(PodFacts {
            subject,
            subject_at: t(10),
        })
    };
    // (case, kind, at, listed_at, tombstoned, pod, verdict)
    let cases: Vec<(
        &str,
        ContainerEventKind,
        _,
        _,
        bool,
        Option<PodFacts>,
        Verdict,
    )> = vec![
        (
            "older than the listing",
            Started,
            t(5),
            t(6),
            false,
            fresh_pod(Some(Created)),
            Verdict::Stale(StaleReason::BeforeListing),
        ),
        (
            "before the listing beats a tombstone and an unknown pod",
            Started,
            t(5),
            t(6),
            true,
            None,
            Verdict::Stale(StaleReason::BeforeListing),
        ),
        (
            "a tombstoned ID",
            Stopped,
            t(20),
            t(6),
            true,
            fresh_pod(None),
            Verdict::Stale(StaleReason::AlreadyRemoved),
        ),
        (
            "a tombstone beats an unknown pod",
            Deleted,
            t(20),
            t(6),
            true,
            None,
            Verdict::Stale(StaleReason::AlreadyRemoved),
        ),
        (
            "an unknown pod",
            Deleted,
            t(20),
            t(6),
            false,
            None,
            Verdict::Unresolved,
        ),
        (
            "created after it started",
            CREATED,
            t(20),
            t(6),
            false,
            fresh_pod(Some(Running)),
            Verdict::Stale(StaleReason::CreatedAfterStart),
        ),
        (
            "created after it finished",
            CREATED,
            t(20),
            t(6),
            false,
            fresh_pod(Some(Exited)),
            Verdict::Stale(StaleReason::CreatedAfterStart),
        ),
        (
            "started after it finished",
            Started,
            t(20),
            t(6),
            false,
            fresh_pod(Some(Exited)),
            Verdict::Stale(StaleReason::StartedAfterFinish),
        ),
        (
            "older than the cache entry",
            Stopped,
            t(9),
            t(6),
            false,
            fresh_pod(Some(Running)),
            Verdict::Stale(StaleReason::OlderThanCache),
        ),
        (
            "no times at all: nothing is stale by time",
            Stopped,
            None,
            None,
            false,
            Some(PodFacts {
                subject: Some(Running),
                subject_at: None,
            }),
            Verdict::Fresh { gap: false },
        ),
        (
            "created for a new container",
            CREATED,
            t(20),
            t(6),
            false,
            fresh_pod(None),
            Verdict::Fresh { gap: false },
        ),
        (
            "started, never seen created: a gap",
            Started,
            t(20),
            t(6),
            false,
            fresh_pod(None),
            Verdict::Fresh { gap: true },
        ),
        (
            "started after created",
            Started,
            t(20),
            t(6),
            false,
            fresh_pod(Some(Created)),
            Verdict::Fresh { gap: false },
        ),
        (
            "stopped, never seen: a gap",
            Stopped,
            t(20),
            t(6),
            false,
            fresh_pod(None),
            Verdict::Fresh { gap: true },
        ),
        (
            "stopped, never seen started: a gap",
            Stopped,
            t(20),
            t(6),
            false,
            fresh_pod(Some(Created)),
            Verdict::Fresh { gap: true },
        ),
        (
            "stopped after running",
            Stopped,
            t(20),
            t(6),
            false,
            fresh_pod(Some(Running)),
            Verdict::Fresh { gap: false },
        ),
        (
            "deleted, never seen: a gap",
            Deleted,
            t(20),
            t(6),
            false,
            fresh_pod(None),
            Verdict::Fresh { gap: true },
        ),
        (
            "deleted after it exited",
            Deleted,
            t(20),
            t(6),
            false,
            fresh_pod(Some(Exited)),
            Verdict::Fresh { gap: false },
        ),
        (
            "a gap that is also older than the cache is stale",
            Started,
            t(9),
            t(6),
            false,
            fresh_pod(None),
            Verdict::Stale(StaleReason::OlderThanCache),
        ),
    ];
    for (case, kind, at, listed_at, tombstoned, pod, want) in cases {
        let facts = Facts {
            kind,
            at,
            listed_at,
            tombstoned,
            pod,
        };
        assert_eq!(classify(&facts), want, "{case}");
    }
}

fn meta(uid: &str) -> PodMeta {
    PodMeta::new(uid, format!("{uid}-name"), "default")
}

fn event(kind: ContainerEventKind, id: &str, pod: Option<&str>, sandbox: &str) -> ContainerEvent {
    ContainerEvent {
        id: id.into(),
        kind,
        created_at: t(100),
        sandbox: Some(SandboxSnapshot {
            pod: pod.map(meta),
            sandbox: Container::new(sandbox, "sandbox", Running),
            ips: Vec::new(),
        }),
        containers: Vec::new(),
    }
}

#[test]
fn resolve_uses_the_metadata_then_the_records() {
    let mut records = Records::new();
    let recorded = Arc::new(
        Pod::new(meta("p1"))
            .with_sandbox(Container::new("sb-1", "p1", Running))
            .with_container(Container::new("c1", "app", Running)),
    );
    records.apply(recorded.uid(), Some(&recorded));
    // (case, event, resolved uid, has a record)
    let cases = [
        (
            "metadata of a recorded pod",
            event(Started, "c1", Some("p1"), "sb-1"),
            Some("p1"),
            true,
        ),
        (
            "metadata of a new pod",
            event(Started, "c9", Some("p2"), "sb-2"),
            Some("p2"),
            false,
        ),
        (
            "no metadata: by the event's ID",
            event(Deleted, "c1", None, "sb-unknown"),
            Some("p1"),
            true,
        ),
        (
            "no metadata: by the sandbox's ID",
            event(Deleted, "c-unknown", None, "sb-1"),
            Some("p1"),
            true,
        ),
        (
            "no metadata, IDs nobody knows",
            event(Deleted, "c-unknown", None, "sb-unknown"),
            None,
            false,
        ),
    ];
    for (case, e, want, recorded) in cases {
        let got = resolve(&e, &records);
        assert_eq!(got.as_ref().map(|r| r.uid.as_str()), want, "{case}: uid");
        assert_eq!(
            got.as_ref().is_some_and(|r| r.old.is_some()),
            recorded,
            "{case}: record"
        );
        if let Some(r) = got {
            assert_eq!(r.meta.uid, r.uid, "{case}: meta");
        }
    }
}

type Entries = &'static [(&'static str, ContainerState)];

fn pod_of(sandboxes: Entries, containers: Entries) -> Pod {
    let mut p = Pod::new(meta("p"));
    p.sandboxes = sandboxes
        .iter()
        .map(|(id, s)| Container::new(*id, "p", *s))
        .collect();
    p.containers = containers
        .iter()
        .map(|(id, s)| Container::new(*id, format!("{id}-name"), *s))
        .collect();
    p
}

fn states(entries: &[Container]) -> Vec<(String, ContainerState)> {
    entries
        .iter()
        .map(|c| (c.id.to_string(), c.state))
        .collect()
}

#[test]
fn advance_moves_the_record_forward_only() {
    struct Case {
        name: &'static str,
        old: Option<(Entries, Entries)>,
        kind: ContainerEventKind,
        id: &'static str,
        carried: Entries,
        tombstoned: &'static [&'static str],
        sandboxes: Entries,
        containers: Entries,
        is_sandbox: bool,
        gone: bool,
    }
    let cases = [
        Case {
            name: "a new container is created",
            old: Some((&[("sb", Running)], &[])),
            kind: CREATED,
            id: "c",
            carried: &[],
            tombstoned: &[],
            sandboxes: &[("sb", Running)],
            containers: &[("c", Created)],
            is_sandbox: false,
            gone: false,
        },
        Case {
            name: "started, with its status carried",
            old: Some((&[("sb", Running)], &[("c", Created)])),
            kind: Started,
            id: "c",
            carried: &[("c", Created)],
            tombstoned: &[],
            sandboxes: &[("sb", Running)],
            containers: &[("c", Running)],
            is_sandbox: false,
            gone: false,
        },
        Case {
            name: "a carried status never moves another entry back",
            old: Some((&[("sb", Running)], &[("a", Exited), ("c", Running)])),
            kind: Stopped,
            id: "c",
            carried: &[("a", Running), ("c", Running)],
            tombstoned: &[],
            sandboxes: &[("sb", Running)],
            containers: &[("a", Exited), ("c", Exited)],
            is_sandbox: false,
            gone: false,
        },
        Case {
            name: "a removed ID does not come back with a carried status",
            old: Some((&[("sb", Running)], &[("c", Running)])),
            kind: Stopped,
            id: "c",
            carried: &[("old", Exited), ("c", Exited)],
            tombstoned: &["old"],
            sandboxes: &[("sb", Running)],
            containers: &[("c", Exited)],
            is_sandbox: false,
            gone: false,
        },
        Case {
            name: "deleted leaves the record",
            old: Some((&[("sb", Running)], &[("c", Exited)])),
            kind: Deleted,
            id: "c",
            carried: &[],
            tombstoned: &[],
            sandboxes: &[("sb", Running)],
            containers: &[],
            is_sandbox: false,
            gone: false,
        },
        Case {
            name: "the sandbox stops",
            old: Some((&[("sb", Running)], &[("c", Running)])),
            kind: Stopped,
            id: "sb",
            carried: &[],
            tombstoned: &[],
            sandboxes: &[("sb", Exited)],
            containers: &[("c", Running)],
            is_sandbox: true,
            gone: false,
        },
        Case {
            name: "the last sandbox deleted: the pod is gone",
            old: Some((&[("sb", Exited)], &[("c", Exited)])),
            kind: Deleted,
            id: "sb",
            carried: &[],
            tombstoned: &[],
            sandboxes: &[],
            containers: &[("c", Exited)],
            is_sandbox: true,
            gone: true,
        },
        Case {
            name: "a first sighting starts from the event",
            old: None,
            kind: Started,
            id: "c",
            carried: &[("c", Created)],
            tombstoned: &[],
            sandboxes: &[("sb", Running)],
            containers: &[("c", Running)],
            is_sandbox: false,
            gone: false,
        },
    ];
    for case in cases {
        let old = case.old.map(|(s, c)| pod_of(s, c));
        let mut e = event(case.kind, case.id, Some("p"), "sb");
        e.containers = case
            .carried
            .iter()
            .map(|(id, s)| Container::new(*id, "", *s))
            .collect();
        let mut tombstones = Tombstones::default();
        for id in case.tombstoned {
            tombstones.insert(&(*id).into());
        }
        let meta = Arc::new(meta("p"));
        let got = advance(old.as_ref(), &meta, &e, &tombstones);
        let want = pod_of(case.sandboxes, case.containers);
        assert_eq!(
            states(&got.pod.sandboxes),
            states(&want.sandboxes),
            "{}: sandboxes",
            case.name
        );
        assert_eq!(
            states(&got.pod.containers),
            states(&want.containers),
            "{}: containers",
            case.name
        );
        assert_eq!(got.is_sandbox, case.is_sandbox, "{}: sandbox", case.name);
        assert_eq!(got.gone, case.gone, "{}: gone", case.name);
    }
    // A carried status without a name keeps the recorded name.
    let old = pod_of(&[("sb", Running)], &[("c", Created)]);
    let mut e = event(Started, "c", Some("p"), "sb");
    e.containers = vec![Container::new("c", "", Created)];
    let got = advance(Some(&old), &Arc::new(meta("p")), &e, &Tombstones::default());
    assert_eq!(got.pod.containers[0].name, "c-name");
}

#[test]
fn merge_moves_the_cached_status_forward_and_stamps_it() {
    let meta = Arc::new(meta("p"));
    let cached = {
        let mut s = PodStatus::new(meta.clone());
        s.sandboxes.push(Container::new("sb", "p", Running));
        s.containers
            .push(Container::new("a", "a", Exited).with_exit(1, "Error"));
        s.containers.push(Container::new("c", "c", Running));
        s.ips = vec!["10.0.0.1".into()];
        s.timestamp = t(50);
        s
    };
    // (case, kind, id, carried, snapshot IPs, want containers, want IPs)
    type Case = (
        &'static str,
        ContainerEventKind,
        &'static str,
        Vec<Container>,
        Vec<&'static str>,
        Entries,
        Vec<&'static str>,
    );
    let cases: [Case; 4] = [
        (
            "stopped: the carried status with its exit code",
            Stopped,
            "c",
            vec![Container::new("c", "c", Exited).with_exit(3, "Error")],
            vec![],
            &[("a", Exited), ("c", Exited)],
            vec!["10.0.0.1"],
        ),
        (
            // (the subject keeps its cached status when the event carries
            // none for it: containerd always does)
            "a status moving back is ignored",
            Stopped,
            "c",
            vec![Container::new("a", "a", Running)],
            vec![],
            &[("a", Exited), ("c", Running)],
            vec!["10.0.0.1"],
        ),
        (
            "deleted leaves the status; the sandbox's new IPs replace the old",
            Deleted,
            "a",
            vec![],
            vec!["10.0.0.2"],
            &[("c", Running)],
            vec!["10.0.0.2"],
        ),
        (
            "a subject without a carried status is described by the record",
            CREATED,
            "n",
            vec![],
            vec![],
            &[("a", Exited), ("c", Running), ("n", Created)],
            vec!["10.0.0.1"],
        ),
    ];
    for (case, kind, id, carried, ips, want, want_ips) in cases {
        let mut e = event(kind, id, Some("p"), "sb");
        e.containers = carried;
        if let Some(s) = &mut e.sandbox {
            s.ips = ips.iter().map(std::string::ToString::to_string).collect();
        }
        let advanced = advance(
            Some(&pod_of(
                &[("sb", Running)],
                &[("a", Exited), ("c", Running)],
            )),
            &meta,
            &e,
            &Tombstones::default(),
        );
        let got = merge(Some(&cached), &meta, &e, &advanced.pod, advanced.is_sandbox);
        let want: Vec<(String, ContainerState)> =
            want.iter().map(|(id, s)| (id.to_string(), *s)).collect();
        assert_eq!(states(&got.containers), want, "{case}");
        assert_eq!(got.ips, want_ips, "{case}: ips");
        assert_eq!(got.timestamp, t(100), "{case}: stamped with the event");
    }
    // The exit code a Stopped event carries is kept.
    let mut e = event(Stopped, "c", Some("p"), "sb");
    e.containers = vec![Container::new("c", "c", Exited).with_exit(3, "Error")];
    let got = merge(Some(&cached), &meta, &e, &pod_of(&[], &[]), false);
    assert_eq!(got.find(&"c".into()).and_then(|c| c.exit_code), Some(3));
}

#[test]
fn a_gap_loses_what_no_relist_can_rebuild() {
    // (kind, the subject's recorded state, transitions lost at least)
    let cases = [
        (Started, None, 0, "a lost CREATED publishes nothing"),
        (Stopped, None, 1, "its start"),
        (Stopped, Some(Created), 1, "its start"),
        (Stopped, Some(Running), 0, "no gap"),
        (Deleted, None, 1, "a container never seen"),
        (Deleted, Some(Running), 1, "its exit code"),
        (Deleted, Some(Exited), 0, "no gap"),
        (CREATED, None, 0, "no gap"),
    ];
    for (kind, subject, lost, case) in cases {
        assert_eq!(
            lost_to_gap(kind, subject),
            lost,
            "{kind:?} {subject:?}: {case}"
        );
    }
}

#[test]
fn a_gap_counts_every_event_between_what_was_known_and_what_came() {
    // (kind, the subject's recorded state, events missed at least)
    let cases = [
        (Started, None, 1, "its CREATED"),
        (Stopped, None, 2, "its CREATED and STARTED"),
        (Stopped, Some(Created), 1, "its STARTED"),
        (Deleted, None, 3, "all but the last"),
        (Deleted, Some(Running), 1, "its STOPPED"),
        (Deleted, Some(Unknown), 1, "its STOPPED"),
        (Deleted, Some(Exited), 0, "none"),
        (CREATED, None, 0, "none"),
    ];
    for (kind, subject, missed, case) in cases {
        assert_eq!(
            missed_by_gap(kind, subject),
            missed,
            "{kind:?} {subject:?}: {case}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_clock_step_is_the_wall_clock_moving_unlike_the_monotonic_one() {
    let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mono = Instant::now();
    let later = mono + Duration::from_secs(10);
    let cases = [
        (wall + Duration::from_secs(10), false, "in step"),
        (
            wall + Duration::from_millis(11_500),
            false,
            "within the tolerance",
        ),
        (wall + Duration::from_secs(3610), true, "an hour forward"),
        (wall - Duration::from_secs(3590), true, "an hour back"),
        (wall + Duration::from_secs(7), true, "3 s back"),
    ];
    for (now, stepped, case) in cases {
        assert_eq!(clock_stepped((wall, mono), (now, later)), stepped, "{case}");
    }
}

/// Generated events against generated records (a stand-in for fuzzing:
/// cargo-fuzz needs nightly). 256 cases a property; `PROPTEST_CASES` raises
/// it.
mod proptests {
    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;

    use super::*;
    use crate::diff::diff_pod;

    /// Any event type number: the four the CRI knows, and any other.
    fn kind() -> impl Strategy<Value = ContainerEventKind> {
        prop_oneof![4 => 0..4i32, 1 => any::<i32>()].prop_filter_map(
            "outside the enum: event_from_cri skips it (tested there)",
            ContainerEventKind::from_cri,
        )
    }

    fn state() -> impl Strategy<Value = ContainerState> {
        prop::sample::select(vec![Created, Running, Exited, Unknown])
    }

    /// Times on a coarse grid, so that equal times happen, or none.
    fn time() -> impl Strategy<Value = Option<SystemTime>> {
        prop_oneof![
            1 => Just(None),
            1 => Just(Some(UNIX_EPOCH)),
            1 => Just(Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX)))),
            6 => (0u64..8).prop_map(t),
        ]
    }

    fn facts() -> impl Strategy<Value = Facts> {
        (
            kind(),
            time(),
            time(),
            any::<bool>(),
            proptest::option::of((proptest::option::of(state()), time())),
        )
            .prop_map(|(kind, at, listed_at, tombstoned, pod)| Facts {
                kind,
                at,
                listed_at,
                tombstoned,
                pod: pod.map(|(subject, cached_at)| PodFacts {
                    subject,
                    subject_at: cached_at,
                }),
            })
    }

    /// Entries with IDs from a small pool (so that events hit them), in ID
    /// order, each ID once, as a listing keeps them.
    fn entries(prefix: &'static str) -> impl Strategy<Value = Vec<Container>> {
        btree_map(0u8..4, state(), 0..4).prop_map(move |m| {
            m.into_iter()
                .map(|(n, s)| {
                    Container::new(format!("{prefix}{n}"), format!("{prefix}{n}-name"), s)
                })
                .collect()
        })
    }

    fn any_id() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u8..4).prop_map(|n| format!("s{n}")),
            (0u8..4).prop_map(|n| format!("c{n}")),
            Just("unknown".to_string()),
        ]
    }

    fn container_id() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u8..4).prop_map(|n| format!("c{n}")),
            Just("unknown".to_string()),
        ]
    }

    fn old_pod() -> impl Strategy<Value = Option<Pod>> {
        proptest::option::of(
            (entries("s"), entries("c")).prop_map(|(sandboxes, containers)| {
                let mut p = Pod::new(meta("p"));
                p.sandboxes = sandboxes;
                p.containers = containers;
                p
            }),
        )
    }

    prop_compose! {
        fn stream_event()(
            kind in kind(),
            id in any_id(),
            created_at in time(),
            sandbox in proptest::option::of(((0u8..4).prop_map(|n| format!("s{n}")), state())),
            // Statuses name containers (or IDs nobody knows): a runtime's
            // sandbox and container IDs never coincide.
            containers in vec((container_id(), state()), 0..4),
        ) -> ContainerEvent {
            ContainerEvent {
                id: id.as_str().into(),
                kind,
                created_at,
                sandbox: sandbox.map(|(id, s)| SandboxSnapshot {
                    pod: Some(meta("p")),
                    sandbox: Container::new(id, "p", s),
                    ips: Vec::new(),
                }),
                containers: containers
                    .into_iter()
                    .map(|(id, s)| Container::new(id, "", s))
                    .collect(),
            }
        }
    }

    fn tombstones() -> impl Strategy<Value = Vec<String>> {
        vec(any_id(), 0..3)
    }

    fn rank_of(state: ContainerState) -> u8 {
        rank(state)
    }

    fn find_state(pod: &Pod, id: &str) -> Option<ContainerState> {
        pod.find(&id.into()).map(|(c, _)| c.state)
    }

    proptest! {
        #![proptest_config(ProptestConfig::default())]

        /// The rules apply in their documented order: a verdict from an
        /// earlier rule holds whatever the later facts are; an event older
        /// than the last listing is stale; with no time nothing is stale by
        /// time; a fresh event broke no rule.
        #[test]
        fn classify_applies_the_rules_in_order(f in facts(), other in facts()) {
            let verdict = classify(&f);
            prop_assert_eq!(classify(&f), verdict, "the same facts, the same verdict");
            let before_listing = matches!((f.at, f.listed_at), (Some(a), Some(l)) if a < l);
            prop_assert_eq!(verdict == Verdict::Stale(StaleReason::BeforeListing), before_listing);
            if before_listing {
                // Nothing later in the order changes it.
                let changed = Facts { kind: other.kind, tombstoned: other.tombstoned, pod: other.pod, ..f };
                prop_assert_eq!(classify(&changed), verdict);
            } else if f.tombstoned {
                prop_assert_eq!(verdict, Verdict::Stale(StaleReason::AlreadyRemoved));
                let changed = Facts { kind: other.kind, pod: other.pod, ..f };
                prop_assert_eq!(classify(&changed), verdict);
            } else if f.pod.is_none() {
                prop_assert_eq!(verdict, Verdict::Unresolved);
            }
            if f.at.is_none() {
                prop_assert!(!matches!(
                    verdict,
                    Verdict::Stale(StaleReason::BeforeListing | StaleReason::OlderThanCache)
                ));
            }
            if let Verdict::Fresh { gap } = verdict {
                let pod = f.pod.expect("a fresh event has a pod");
                prop_assert!(!f.tombstoned);
                prop_assert!(!matches!((f.at, pod.subject_at), (Some(a), Some(c)) if a < c));
                prop_assert!(!matches!(
                    (f.kind, pod.subject),
                    (ContainerEventKind::Created, Some(Running | Exited))
                        | (ContainerEventKind::Started, Some(Exited))
                ));
                // A gap: the subject's predecessor state was never seen.
                let want_gap = match f.kind {
                    ContainerEventKind::Created => false,
                    ContainerEventKind::Started => pod.subject.is_none(),
                    // Deleted while never seen, or while seen running
                    // (its stop, and exit code, went elsewhere).
                    ContainerEventKind::Deleted => {
                        matches!(pod.subject, None | Some(Running | Unknown))
                    }
                    ContainerEventKind::Stopped => matches!(pod.subject, None | Some(Created)),
                };
                prop_assert_eq!(gap, want_gap);
            }
        }

        /// A newer listing never makes a stale-by-listing event fresh, and an
        /// older event is as stale.
        #[test]
        fn staleness_by_listing_only_grows(f in facts(), later in 0u64..4, earlier in 0u64..4) {
            if classify(&f) != Verdict::Stale(StaleReason::BeforeListing) {
                return Ok(());
            }
            let (at, listed) = (f.at.expect("stale by time"), f.listed_at.expect("stale by time"));
            let newer_listing = Facts { listed_at: Some(listed + Duration::from_secs(later)), ..f };
            prop_assert_eq!(classify(&newer_listing), Verdict::Stale(StaleReason::BeforeListing));
            if let Some(older) = at.checked_sub(Duration::from_secs(earlier)) {
                let older_event = Facts { at: Some(older), ..f };
                prop_assert_eq!(classify(&older_event), Verdict::Stale(StaleReason::BeforeListing));
            }
        }

        /// Advancing a record by a fresh event: entries only move forward,
        /// a removed ID stays removed, the subject takes the event's state
        /// (or leaves on DELETED), entries stay in ID order, each ID once;
        /// and the same event delivered again changes nothing and publishes
        /// nothing.
        #[test]
        fn a_fresh_event_moves_the_record_forward_once(
            old in old_pod(),
            event in stream_event(),
            buried in tombstones(),
            listed_at in time(),
        ) {
            let records = {
                let mut r = Records::new();
                if let Some(p) = &old {
                    r.apply(&PodUid::new("p"), Some(&Arc::new(p.clone())));
                }
                r
            };
            let mut graves = Tombstones::default();
            for id in &buried {
                graves.insert(&id.as_str().into());
            }
            let Some(resolved) = resolve(&event, &records) else {
                // Only an event whose sandbox names no pod and whose IDs no
                // record holds; these all name pod p.
                prop_assert!(event.sandbox.is_none() && old.as_ref().is_none_or(|p| p.find(&event.id).is_none()));
                return Ok(());
            };
            let old_arc = resolved.old.clone();
            let facts = Facts {
                kind: event.kind,
                at: event.created_at,
                listed_at,
                tombstoned: graves.contains(&event.id),
                pod: Some(PodFacts {
                    subject: old_arc.as_deref().and_then(|p| find_state(p, event.id.as_str())),
                    subject_at: None,
                }),
            };
            if !matches!(classify(&facts), Verdict::Fresh { .. }) {
                return Ok(());
            }
            let advanced = advance(old_arc.as_deref(), &resolved.meta, &event, &graves);
            let new = &advanced.pod;
            for entries in [&new.sandboxes, &new.containers] {
                prop_assert!(entries.windows(2).all(|w| w[0].id < w[1].id), "ID order, each once");
            }
            if let Some(old) = old_arc.as_deref() {
                for (before, after) in [(&old.sandboxes, &new.sandboxes), (&old.containers, &new.containers)] {
                    for c in before {
                        if let Some(now) = after.iter().find(|n| n.id == c.id) {
                            prop_assert!(rank_of(now.state) >= rank_of(c.state), "{:?} moved back", c.id);
                        }
                    }
                }
            }
            for id in &buried {
                let was = old_arc.as_deref().and_then(|p| find_state(p, id));
                if was.is_none() {
                    prop_assert!(find_state(new, id).is_none(), "removed {} came back", id);
                }
            }
            match subject_state(event.kind) {
                None => prop_assert!(find_state(new, event.id.as_str()).is_none()),
                Some(s) => {
                    let now = find_state(new, event.id.as_str());
                    prop_assert!(now.is_some_and(|now| rank_of(now) >= rank_of(s)));
                }
            }
            let uid = PodUid::new("p");
            let new_arc = Arc::new(new.clone());
            let events = diff_pod(&uid, old_arc.as_ref(), (!advanced.gone).then_some(&new_arc));
            let mut seen = std::collections::HashSet::new();
            for e in &events {
                prop_assert!(seen.insert((e.id.clone(), e.kind, e.entry)), "{:?} twice", e);
            }
            if advanced.gone {
                return Ok(());
            }
            // Delivered again: nothing moves, nothing is published.
            graves.bury(&events);
            let again_facts = Facts {
                tombstoned: graves.contains(&event.id),
                pod: Some(PodFacts { subject: find_state(new, event.id.as_str()), subject_at: event.created_at }),
                ..facts
            };
            if let Verdict::Fresh { .. } = classify(&again_facts) {
                let again = advance(Some(new), &resolved.meta, &event, &graves);
                prop_assert_eq!(&again.pod, new);
                prop_assert!(diff_pod(&uid, Some(&new_arc), Some(&Arc::new(again.pod))).is_empty());
            }
        }
    }
}
