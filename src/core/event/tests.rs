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
