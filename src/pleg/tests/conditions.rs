//! The watch-condition matrix, beside the code because two cases reach into
//! the generator's internals (forcing a reinspection, rewinding a version).

// The matrix is one table, its cases flags.
#![allow(clippy::too_many_lines, clippy::struct_excessive_bools)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;

use crate::condition::{WatchCondition, running_container_condition};
use crate::model::{Container, ContainerState, ContainerState::*, Pod, PodMeta, PodStatus, PodUid};
use crate::runtime::fake::FakeRuntime;
use crate::{Config, EventType, Pleg};

fn entry(id: &str, state: ContainerState) -> Container {
    Container::new(id, id, state)
}

fn pod(
    uid: &str,
    sandboxes: &[(&str, ContainerState)],
    containers: &[(&str, ContainerState)],
) -> Pod {
    let mut p = Pod::new(PodMeta::new(uid, format!("{uid}-pod"), "default"));
    p.sandboxes = sandboxes
        .iter()
        .map(|(id, s)| entry(&format!("{uid}-{id}"), *s))
        .collect();
    p.containers = containers.iter().map(|(id, s)| entry(id, *s)).collect();
    p
}

fn listed_pods() -> Vec<Pod> {
    vec![
        pod("running", &[("s", Running)], &[("c", Running)]),
        pod(
            "running-2",
            &[("s", Running)],
            &[("c-exited", Exited), ("c-running", Running)],
        ),
        pod("terminating", &[("s", Exited)], &[]),
        pod("reinspect", &[("s", Running)], &[]),
    ]
}

type Make = Box<dyn Fn(&Pleg) -> WatchCondition>;

struct Case {
    name: &'static str,
    pod: &'static str,
    conditions: Vec<(&'static str, Make)>,
    set_twice: bool,
    expect_evaluated: bool,
    expect_removed: bool,
    expect_left: &'static [(&'static str, u64)],
    expect_met: bool,
    /// Whether the pod's status is fetched at the relist (once at most).
    expect_fetched: bool,
}

fn always() -> Make {
    Box::new(|_| Arc::new(|_: &PodStatus| true))
}

fn never() -> Make {
    Box::new(|_| Arc::new(|_: &PodStatus| false))
}

/// Met, but re-sets itself while being evaluated, so it must survive with a
/// bumped version.
fn updating() -> Make {
    Box::new(|pleg| {
        let pleg = pleg.clone();
        Arc::new(move |_: &PodStatus| {
            pleg.set_pod_watch_condition(
                &PodUid::new("running"),
                "updating",
                Arc::new(|_: &PodStatus| true),
            );
            true
        })
    })
}

/// Met, but rewinds its stored version while being evaluated, so the version
/// that was evaluated no longer matches and it must survive.
fn resetting() -> Make {
    Box::new(|pleg| {
        let pleg = pleg.clone();
        Arc::new(move |_: &PodStatus| {
            pleg.conditions()
                .force_version(&PodUid::new("running"), "resetting", 0);
            true
        })
    })
}

fn container(name: &'static str, met: bool) -> Make {
    Box::new(move |_| {
        running_container_condition(name, move |c| {
            assert_eq!(
                c.name, name,
                "the condition sees the container it asked for"
            );
            met
        })
    })
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "no watch conditions",
            pod: "running",
            conditions: vec![],
            set_twice: false,
            expect_evaluated: false,
            expect_removed: true,
            expect_left: &[],
            expect_met: false,
            expect_fetched: false,
        },
        Case {
            name: "running pod with met, unmet and updated-while-evaluated conditions",
            pod: "running",
            conditions: vec![
                ("completing", always()),
                ("watching", never()),
                ("updating", updating()),
            ],
            set_twice: false,
            expect_evaluated: true,
            expect_removed: false,
            expect_left: &[("updating", 1), ("watching", 0)],
            expect_met: true,
            expect_fetched: true,
        },
        Case {
            name: "conditions with versions bumped by setting twice",
            pod: "running",
            conditions: vec![
                ("completing", always()),
                ("watching", never()),
                ("updating", updating()),
            ],
            set_twice: true,
            expect_evaluated: true,
            expect_removed: false,
            expect_left: &[("updating", 2), ("watching", 1)],
            expect_met: true,
            expect_fetched: true,
        },
        Case {
            name: "met condition whose version moved during evaluation",
            pod: "running",
            conditions: vec![("resetting", resetting())],
            set_twice: true,
            expect_evaluated: true,
            expect_removed: false,
            expect_left: &[("resetting", 0)],
            expect_met: true,
            expect_fetched: true,
        },
        Case {
            name: "pod that never existed",
            pod: "non-existent",
            conditions: vec![("watching", never())],
            set_twice: false,
            expect_evaluated: false,
            expect_removed: true,
            expect_left: &[],
            expect_met: false,
            expect_fetched: false,
        },
        Case {
            name: "terminated pod that vanished",
            pod: "terminated",
            conditions: vec![("watching", never())],
            set_twice: false,
            expect_evaluated: false,
            expect_removed: true,
            expect_left: &[],
            expect_met: false,
            expect_fetched: false,
        },
        Case {
            name: "pod being reinspected",
            pod: "reinspect",
            conditions: vec![("watching", never())],
            set_twice: false,
            expect_evaluated: true,
            expect_removed: false,
            expect_left: &[("watching", 0)],
            expect_met: false,
            expect_fetched: true,
        },
        Case {
            name: "terminating pod that is still listed",
            pod: "terminating",
            conditions: vec![("watching", never())],
            set_twice: false,
            expect_evaluated: true,
            expect_removed: false,
            expect_left: &[("watching", 0)],
            expect_met: false,
            expect_fetched: true,
        },
        Case {
            name: "single-container conditions",
            pod: "running",
            conditions: vec![
                ("completing", container("c", true)),
                ("watching", container("c", false)),
            ],
            set_twice: false,
            expect_evaluated: true,
            expect_removed: false,
            expect_left: &[("watching", 0)],
            expect_met: true,
            expect_fetched: true,
        },
        Case {
            name: "multi-container conditions",
            pod: "running-2",
            conditions: vec![
                ("completing:exited", container("c-exited", true)),
                ("watching:exited", container("c-exited", false)),
                ("completing:running", container("c-running", true)),
                ("watching:running", container("c-running", false)),
                ("completing:dne", container("c-dne", true)),
                ("watching:dne", container("c-dne", false)),
            ],
            set_twice: false,
            expect_evaluated: true,
            expect_removed: false,
            expect_left: &[("watching:running", 0)],
            expect_met: true,
            expect_fetched: true,
        },
    ]
}

#[tokio::test(start_paused = true)]
async fn the_watch_condition_matrix() {
    for case in cases() {
        let mut initial = listed_pods();
        initial.push(pod("terminated", &[("s", Exited)], &[]));
        let runtime = FakeRuntime::with_pods(initial);
        let pleg = Pleg::new(runtime.clone(), Config::generic()).expect("valid config");
        let mut sub = pleg.subscribe();
        pleg.relist().await.expect("listing works");
        pleg.inner
            .shared
            .core
            .lock()
            .await
            .force_reinspect(PodUid::new("reinspect"));
        runtime.set_pods(listed_pods());
        while sub.try_recv().is_some() {}

        let uid = PodUid::new(case.pod);
        let evaluated: Arc<Mutex<Vec<&'static str>>> = Arc::default();
        for (key, make) in &case.conditions {
            let inner = make(&pleg);
            let seen = evaluated.clone();
            let expected_uid = uid.clone();
            let key: &'static str = key;
            let wrapped: WatchCondition = Arc::new(move |status: &PodStatus| {
                assert_eq!(
                    status.uid(),
                    &expected_uid,
                    "evaluated against the right pod"
                );
                seen.lock().push(key);
                inner(status)
            });
            pleg.set_pod_watch_condition(&uid, key, wrapped.clone());
            if case.set_twice {
                pleg.set_pod_watch_condition(&uid, key, wrapped);
            }
        }
        let fetches_before = runtime.status_calls(&uid);
        pleg.relist().await.expect("listing works");
        assert_eq!(
            runtime.status_calls(&uid) - fetches_before,
            u64::from(case.expect_fetched),
            "{}: status fetches",
            case.name
        );

        let evaluated = evaluated.lock().clone();
        if case.expect_evaluated {
            assert_eq!(
                evaluated.len(),
                case.conditions.len(),
                "{}: every condition evaluated",
                case.name
            );
        } else {
            assert!(
                evaluated.is_empty(),
                "{}: nothing evaluated, got {evaluated:?}",
                case.name
            );
        }
        if case.expect_removed {
            assert!(
                !pleg.conditions().has_pod(&uid),
                "{}: pod purged from the registry",
                case.name
            );
        } else {
            let left: BTreeMap<String, u64> =
                pleg.conditions().versions(&uid).into_iter().collect();
            let want: BTreeMap<String, u64> = case
                .expect_left
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect();
            assert_eq!(left, want, "{}", case.name);
        }

        // One ConditionMet per pod per relist, however many conditions were met.
        let met: Vec<String> = std::iter::from_fn(|| sub.try_recv())
            .filter_map(|d| {
                d.event()
                    .filter(|e| e.kind == EventType::ConditionMet)
                    .map(|e| e.pod.uid.to_string())
            })
            .collect();
        let want_met: Vec<String> = if case.expect_met {
            vec![case.pod.to_string()]
        } else {
            vec![]
        };
        assert_eq!(met, want_met, "{}", case.name);
    }
}

#[tokio::test(start_paused = true)]
async fn a_watched_pod_is_reinspected_on_every_relist_until_its_condition_is_met() {
    let runtime = FakeRuntime::with_pods(listed_pods());
    let pleg = Pleg::new(runtime.clone(), Config::generic()).expect("valid config");
    pleg.relist().await.expect("listing works");
    let uid = PodUid::new("running");
    let calls_before = runtime.status_calls(&uid);
    let met = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = met.clone();
    pleg.set_pod_watch_condition(
        &uid,
        "k",
        Arc::new(move |_: &PodStatus| flag.load(Ordering::SeqCst)),
    );
    for _ in 0..3 {
        pleg.relist().await.expect("listing works");
    }
    assert_eq!(runtime.status_calls(&uid) - calls_before, 3);
    met.store(true, Ordering::SeqCst);
    pleg.relist().await.expect("listing works");
    pleg.relist().await.expect("listing works");
    assert_eq!(
        runtime.status_calls(&uid) - calls_before,
        4,
        "not inspected once met"
    );
    assert!(pleg.conditions().is_empty());
}
