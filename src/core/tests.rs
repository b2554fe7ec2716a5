//! What the core decides before it writes: IPs kept, errors beside the last
//! good status, last events bounded.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::*;
use crate::event::EventSource;
use crate::model::{Container, ContainerState, PodMeta};

fn status(ips: &[&str], sandbox: ContainerState) -> PodStatus {
    let mut s = PodStatus::new(Arc::new(PodMeta::new("p", "p", "ns")));
    s.ips = ips.iter().map(std::string::ToString::to_string).collect();
    s.sandboxes.push(Container::new("s", "p", sandbox));
    s
}

#[test]
fn ips_survive_a_status_without_ips_only_when_no_sandbox_is_ready() {
    let previous = status(&["10.0.0.1"], ContainerState::Running);
    let mut torn_down = status(&[], ContainerState::Exited);
    retain_ips(&mut torn_down, &previous);
    assert_eq!(torn_down.ips, ["10.0.0.1"]);
    let mut ready = status(&[], ContainerState::Running);
    retain_ips(&mut ready, &previous);
    assert!(ready.ips.is_empty());
    let mut renumbered = status(&["10.0.0.2"], ContainerState::Exited);
    retain_ips(&mut renumbered, &previous);
    assert_eq!(renumbered.ips, ["10.0.0.2"]);
}

fn event(id: &str, kind: EventType, at: u64) -> Arc<PodLifecycleEvent> {
    let meta = Arc::new(PodMeta::new("p", "p", "ns"));
    let mut e = PodLifecycleEvent::new(
        meta,
        kind,
        EventSource::Relist,
        SystemTime::UNIX_EPOCH + Duration::from_secs(at),
    );
    e.container = Some(crate::event::ContainerRef {
        id: id.into(),
        name: id.into(),
        attempt: 0,
        kind: crate::model::EntryKind::Container,
    });
    Arc::new(e)
}

#[test]
fn last_events_keep_one_per_id_in_id_order() {
    let first = merge_last_events(
        None,
        &[
            event("b", EventType::ContainerStarted, 1),
            event("a", EventType::ContainerStarted, 2),
        ],
    );
    let ids: Vec<&str> = first.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    let second = merge_last_events(Some(&first), &[event("b", EventType::ContainerDied, 3)]);
    assert_eq!(second.len(), 2);
    assert_eq!(second[1].kind, EventType::ContainerDied);
}

#[test]
fn last_events_forget_the_oldest_removed_entries_first() {
    let mut last: Arc<[LastEvent]> = Arc::from([]);
    for i in 0..LAST_EVENTS_PER_POD as u64 {
        let id = format!("c{i:03}");
        last = merge_last_events(Some(&last), &[event(&id, EventType::ContainerRemoved, i)]);
    }
    assert_eq!(last.len(), LAST_EVENTS_PER_POD);
    let last = merge_last_events(
        Some(&last),
        &[event("new", EventType::ContainerStarted, 100)],
    );
    assert_eq!(last.len(), LAST_EVENTS_PER_POD);
    assert!(
        last.iter().all(|e| e.id.as_str() != "c000"),
        "the oldest went"
    );
    assert!(last.is_sorted_by(|a, b| a.id <= b.id));
}

fn core_over(runtime: std::sync::Arc<crate::runtime::fake::FakeRuntime>) -> Core {
    Core::new(Parts {
        runtime,
        clock: crate::clock::system(),
        conditions: Arc::default(),
        cache: Writer::new(),
        hub: Hub::new(),
        metrics: Arc::new(Metrics::new()),
        counts: Arc::default(),
        failing_pods: Arc::default(),
    })
}

#[tokio::test(start_paused = true)]
async fn a_failed_fetch_keeps_the_last_good_status_beside_its_error() {
    let mut core = core_over(crate::runtime::fake::FakeRuntime::new());
    let good = status(&["10.0.0.1"], ContainerState::Running);
    let meta = good.meta.clone();
    let uid = meta.uid.clone();
    let t = Instant::now();
    core.cache.set(
        &uid,
        CacheEntry {
            status: Arc::new(good.clone()),
            error: None,
            modified: t,
            last_events: Arc::from([]),
        },
    );
    let error = || runtime::Error::failed(runtime::Operation::PodStatus, "boom");
    core.fetch_failed(&meta, error(), t + Duration::from_secs(1));
    let entry = core.cache.get(&uid).expect("cached");
    assert_eq!(*entry.status, good);
    assert!(entry.error.is_some());
    core.fetch_failed(&meta, error(), t);
    assert_eq!(
        core.cache.get(&uid).map(|e| e.modified),
        Some(t + Duration::from_secs(1)),
        "older than the entry"
    );
    // A pod never fetched successfully gets an empty status with the error.
    let other = Arc::new(PodMeta::new("q", "q", "ns"));
    core.fetch_failed(&other, error(), t);
    let entry = core.cache.get(&other.uid).expect("cached");
    assert!(entry.status.containers.is_empty() && entry.error.is_some());
}
