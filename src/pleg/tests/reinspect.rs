//! Kubelet 1.37 parity: `request_reinspect`, the per-pod relist duration,
//! `terminated_containers_total`; and the runtime seam's own counts.

use std::time::Duration;

use super::pod;
use crate::metrics::{ExitCodeLabel, FreeText, TerminatedLabels};
use crate::model::{Container, ContainerState::*, EntryKind, PodUid};
use crate::runtime::fake::FakeRuntime;
use crate::runtime::{Operation, RpcOutcome};
use crate::{Config, Delivery, EventSource, EventType, Pleg, RelistDuration};

/// A generator that relists every hour unless asked.
fn hourly(runtime: &std::sync::Arc<FakeRuntime>) -> Pleg {
    let config = Config::generic().with_relist(RelistDuration::new(
        Duration::from_secs(3600),
        Duration::from_secs(7200),
    ));
    Pleg::new(runtime.clone(), config).expect("valid config")
}

fn kinds(sub: &mut crate::Subscription) -> Vec<(EventType, String)> {
    std::iter::from_fn(|| sub.try_recv())
        .filter_map(|d| match d {
            Delivery::Event(e) => Some((e.kind, e.pod.uid.to_string())),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn request_reinspect_relists_at_once_and_always_publishes_a_pod_sync() {
    let runtime = FakeRuntime::with_pods(vec![pod("p", &[("c", Running)])]);
    let pleg = hourly(&runtime);
    let uid = PodUid::new("p");
    pleg.relist().await.expect("listing works");
    let mut sub = pleg.subscribe();
    let calls = runtime.status_calls(&uid);
    // The loop's own first relist finds nothing new; the request is served
    // by it or by the one it starts at once.
    pleg.start().expect("inside tokio");
    pleg.request_reinspect(&uid);
    let event = tokio::time::timeout(Duration::from_secs(1), sub.recv())
        .await
        .expect("well before the hour-long period")
        .and_then(|d| d.event().cloned())
        .expect("an event");
    assert_eq!(event.kind, EventType::PodSync);
    assert_eq!(event.pod.uid, uid);
    assert_eq!(event.source, EventSource::Relist);
    assert!(event.container.is_none());
    assert_eq!(runtime.status_calls(&uid), calls + 1, "fully inspected");
    assert_eq!(
        pleg.inner
            .shared
            .metrics
            .pod_relist_duration
            .snapshot()
            .count,
        1,
        "timed as a per-pod relist"
    );
    // One PodSync per request.
    pleg.relist().await.expect("listing works");
    assert!(kinds(&mut sub).is_empty());
    pleg.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_reinspected_pod_gets_its_pod_sync_once_a_fetch_succeeds_and_an_unlisted_one_none() {
    let runtime = FakeRuntime::with_pods(vec![pod("p", &[("c", Running)])]);
    let pleg = hourly(&runtime);
    pleg.relist().await.expect("listing works");
    let mut sub = pleg.subscribe();
    let uid = PodUid::new("p");

    runtime.set_status_failure("p", Some("runtime busy".into()));
    pleg.request_reinspect(&uid);
    pleg.relist().await.expect("listing works");
    assert!(kinds(&mut sub).is_empty(), "nothing while the fetch fails");
    runtime.set_status_failure("p", None);
    pleg.relist().await.expect("listing works");
    assert_eq!(kinds(&mut sub), [(EventType::PodSync, "p".to_string())]);

    pleg.request_reinspect(&PodUid::new("nobody"));
    pleg.relist().await.expect("listing works");
    assert!(
        kinds(&mut sub).is_empty(),
        "no PodSync for a pod not listed"
    );
}

#[tokio::test(start_paused = true)]
async fn deaths_are_counted_by_container_type_exit_code_and_reason() {
    let mut p = pod("p", &[]);
    p.sandboxes.push(Container::new("sb", "p", Running));
    p.containers
        .push(Container::new("c", "app", Exited).with_exit(3, "Error"));
    let runtime = FakeRuntime::with_pods(vec![p.clone()]);
    let pleg = hourly(&runtime);
    pleg.relist().await.expect("listing works");
    p.sandboxes[0].state = Exited;
    runtime.set_pods(vec![p]);
    pleg.relist().await.expect("listing works");

    let count = |container_type, exit_code, reason: &str| {
        pleg.inner
            .shared
            .metrics
            .terminated
            .get(&TerminatedLabels {
                container_type,
                exit_code: ExitCodeLabel(exit_code),
                reason: FreeText(reason.into()),
            })
            .map_or(0, |c| c.get())
    };
    assert_eq!(count(EntryKind::Container, Some(3), "Error"), 1);
    assert_eq!(count(EntryKind::Sandbox, None, ""), 1);
}

#[tokio::test(start_paused = true)]
async fn every_runtime_call_is_counted_by_operation_and_outcome_and_bounded() {
    let runtime = FakeRuntime::with_pods(vec![pod("p", &[("c", Running)])]);
    let config = Config::generic().with_request_timeout(Duration::from_secs(2));
    let pleg = Pleg::new(runtime.clone(), config).expect("valid config");
    pleg.relist().await.expect("listing works");
    runtime.set_list_delay(Duration::from_secs(5));
    let err = pleg.relist().await.expect_err("slower than the timeout");
    assert_eq!(err.to_string(), "runtime call ListPods timed out after 2s");
    let ops = pleg.inner.shared.runtime.operations();
    let ok = RpcOutcome::Code(tonic::Code::Ok);
    assert_eq!(ops.count(Operation::ListPods, ok), 1);
    assert_eq!(ops.count(Operation::ListPods, RpcOutcome::Timeout), 1);
    assert_eq!(ops.count(Operation::PodStatus, ok), 1);
}
