//! The gRPC server over a real unix socket, from inside the crate: a flood
//! published straight into the hub (crate-private) while a watcher reads
//! nothing. The rest of the gRPC API is tested in `tests/grpc.rs`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{Client, ClientError, ServeError, serve};
use crate::event::{ContainerRef, EventSource, EventType, PodLifecycleEvent};
use crate::hub::{Delivery, Filter};
use crate::model::{EntryKind, PodMeta};
use crate::runtime::fake::FakeRuntime;
use crate::server::Daemon;
use crate::{Config, Pleg};

/// Bounds every wait: a broken server fails the test instead of hanging it.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A directory of the test's own, for its socket.
fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("pleg-grpc-test")
        .tempdir()
        .expect("temporary directory")
}

/// A daemon over the scripted runtime, relisting only, never started.
fn daemon() -> Daemon {
    let pleg = Pleg::new(FakeRuntime::new(), Config::generic()).expect("valid config");
    Daemon::new(pleg, "fake", "")
}

/// A running `serve`, stopped by `stop`.
struct Server {
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Server {
    /// Serves `daemon` on `socket` and waits until a client gets answers.
    async fn start(daemon: &Daemon, socket: &Path) -> Server {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn({
            let daemon = daemon.clone();
            let socket = socket.to_path_buf();
            async move {
                serve(daemon, &socket, async {
                    let _ = stopped.await;
                })
                .await
            }
        });
        let server = Server {
            socket: socket.to_path_buf(),
            stop: Some(stop),
            task,
        };
        server.client().await;
        server
    }

    /// A connected client, retrying while the server is still binding.
    async fn client(&self) -> Client {
        within("connecting to the daemon", async {
            loop {
                match Client::connect(&self.socket).await {
                    Ok(client) => return client,
                    Err(ClientError::NoSocket { .. } | ClientError::Unreachable { .. }) => {
                        assert!(!self.task.is_finished(), "serve ended early");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(e) => panic!("connect: {e}"),
                }
            }
        })
        .await
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within("serve to return", &mut self.task)
            .await
            .expect("serve task")
            .expect("serve ends cleanly");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_gets_a_resync_with_the_exact_missed_count() {
    let dir = temp_dir();
    let daemon = daemon();
    let server = Server::start(&daemon, &dir.path().join("pleg.sock")).await;
    let mut client = server.client().await;
    let mut watch = within("watch", client.watch(&Filter::default(), 4))
        .await
        .expect("watch");
    let hub = daemon.pleg.hub();
    assert_eq!(hub.subscriber_count(), 1);

    // One event per batch, numbered by its container's attempt, published
    // while the client reads nothing, until the daemon's queue for it
    // overflowed, then 5000 more, letting the daemon's side of the stream
    // run now and then (so events, drops and Resyncs interleave).
    let pod = Arc::new(PodMeta::new("flood", "flood", "default"));
    let mut published: u32 = 0;
    let mut overflowed_at = None;
    while overflowed_at.is_none_or(|at| published < at + 5000) {
        hub.publish(&[numbered(&pod, published)]);
        published += 1;
        if overflowed_at.is_none() && hub.discarded() > 0 {
            overflowed_at = Some(published);
        }
        if published.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
        assert!(published < 2_000_000, "the queue never overflowed");
    }

    // Every event arrives once, in order; each gap is announced by a Resync
    // carrying exactly its size.
    let (mut next, mut events, mut missed, mut resyncs) = (0u64, 0u64, 0u64, 0);
    within("every event or its Resync", async {
        while events + missed < u64::from(published) {
            match watch.next().await.expect("stream open").expect("readable") {
                Delivery::Event(e) => {
                    let n = e.container.as_ref().map(|c| u64::from(c.attempt));
                    assert_eq!(n, Some(next), "events in order, gaps counted");
                    next += 1;
                    events += 1;
                }
                Delivery::Resync { missed: m, .. } => {
                    assert!(m > 0);
                    next += m;
                    missed += m;
                    resyncs += 1;
                }
                other => panic!("a live watch got {other:?}"),
            }
        }
    })
    .await;
    assert!(resyncs >= 1, "the slow client was told it lagged");
    assert_eq!(missed, hub.discarded(), "the daemon counted the same");
    assert_eq!(events + missed, u64::from(published));
    server.stop().await;
    assert!(watch.next().await.is_none(), "a clean end after shutdown");
}

/// What one queued event costs the daemon, the figure behind the default
/// [`Limits`](super::Limits) (README, operator's guide): a queue slot per
/// subscriber it is queued for, and the event itself once, however many
/// queues hold it. Printed with `--nocapture`.
#[test]
fn a_queued_event_costs_a_queue_slot_and_one_shared_event() {
    let slot = crate::hub::QUEUE_SLOT_BYTES;
    // An `Arc` allocation holds two counters and the event; the container
    // name and reason are heap strings of their own (the pod's metadata and
    // long container IDs are shared with the cache).
    let event = 2 * std::mem::size_of::<usize>() + std::mem::size_of::<PodLifecycleEvent>();
    let strings = 2 * 32; // two short strings, a 32-byte allocation each
    println!(
        "queue slot {slot} B; event {event} B + {strings} B of strings = {} B when no other queue shares it",
        event + strings
    );
    assert_eq!(slot, 16, "a queued delivery is one pointer and a tag");
    assert!(event + strings <= 512, "{event} + {strings}");
}

/// A started-container event of pod `uid`, numbered by its attempt.
fn numbered(pod: &Arc<PodMeta>, n: u32) -> Arc<PodLifecycleEvent> {
    let mut e = PodLifecycleEvent::new(
        pod.clone(),
        EventType::ContainerStarted,
        EventSource::Relist,
        std::time::SystemTime::now(),
    );
    e.container = Some(ContainerRef {
        id: format!("ctr-{n}").into(),
        name: "ctr".into(),
        attempt: n,
        kind: EntryKind::Container,
    });
    Arc::new(e)
}

/// The seqs of the next `n` deliveries, all of them events.
async fn next_event_seqs(watch: &mut super::WatchStream, n: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    within("the next events", async {
        while seqs.len() < n {
            match watch.next().await.expect("stream open").expect("readable") {
                Delivery::Event(e) => seqs.push(e.seq().expect("events carry seqs")),
                other => panic!("expected an event, got {other:?}"),
            }
        }
    })
    .await;
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_reconnects_with_its_token_misses_nothing() {
    let dir = temp_dir();
    let daemon = daemon();
    let server = Server::start(&daemon, &dir.path().join("pleg.sock")).await;
    let hub = daemon.pleg.hub().clone();
    let pod = Arc::new(PodMeta::new("p", "p", "default"));
    let mut client = server.client().await;
    let mut watch = within("watch", client.watch(&Filter::default(), 64))
        .await
        .expect("watch");
    assert_eq!(watch.epoch(), Some(hub.epoch()), "the pleg-epoch header");
    for n in 0..5 {
        hub.publish(&[numbered(&pod, n)]);
    }
    assert_eq!(next_event_seqs(&mut watch, 3).await, vec![1, 2, 3]);
    let token = watch.resume_token().expect("a daemon that resumes");
    assert_eq!(token.seq, 3);
    drop(watch);
    within("the daemon to unsubscribe", async {
        while hub.subscriber_count() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    for n in 5..9 {
        hub.publish(&[numbered(&pod, n)]);
    }
    let from = super::WatchFrom::live().resume(Some(token.clone()));
    let mut back = within("resume", client.watch_from(&Filter::default(), 64, &from))
        .await
        .expect("resumed");
    assert_eq!(back.resume_token(), Some(token), "it starts where it left");
    hub.publish(&[numbered(&pod, 9)]);
    assert_eq!(
        next_event_seqs(&mut back, 7).await,
        (4..=10).collect::<Vec<_>>(),
        "the six missed, in order, then the live one, once each"
    );

    // A point the daemon never gave out is refused, naming `since`.
    let ahead = super::WatchFrom::live().resume(Some(crate::hub::ResumeToken::new(
        hub.epoch().clone(),
        1_000,
    )));
    match client.watch_from(&Filter::default(), 64, &ahead).await {
        Err(ClientError::Rpc { code, message, .. }) => {
            assert_eq!(code, tonic::Code::InvalidArgument);
            assert!(message.starts_with("since: "), "{message}");
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    server.stop().await;
}

/// The client that reconnects by itself: across a server that goes away
/// and comes back on the same socket it loses and repeats nothing; across a
/// daemon restart (a new run) it says so, then gives the initial state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resuming_watch_survives_the_server_going_away_and_a_daemon_restart() {
    let dir = temp_dir();
    let socket = dir.path().join("pleg.sock");
    let runtime = FakeRuntime::with_pods(vec![
        crate::model::Pod::new(PodMeta::new("p", "p", "default")).with_container(
            crate::model::Container::new("c1", "app", crate::model::ContainerState::Running),
        ),
    ]);
    let pleg = Pleg::new(runtime.clone(), Config::generic()).expect("valid config");
    let daemon = Daemon::new(pleg, "fake", "");
    daemon.pleg.relist().await.expect("the fake lists");
    let hub = daemon.pleg.hub().clone();
    let pod = Arc::new(PodMeta::new("q", "q", "default"));
    let server = Server::start(&daemon, &socket).await;
    let from = super::WatchFrom::live().initial_state(true);
    let mut watch =
        super::ResumingWatch::new(&socket, &Filter::default(), 64, from).expect("sendable");
    within("start", watch.start()).await.expect("connected");
    let mut next = async || {
        within("the next delivery", watch.next())
            .await
            .expect("never ends")
            .expect("readable")
    };
    let first = next().await;
    assert!(
        matches!(&first, Delivery::Initial(e) if e.kind == EventType::ContainerStarted
            && e.container_id().map(crate::model::ContainerId::as_str) == Some("c1")),
        "{first:?}"
    );
    let synced = next().await;
    assert_eq!(synced, Delivery::Synced(hub.resume_token()));
    hub.publish(&[numbered(&pod, 0)]);
    let seq_of = |d: &Delivery| d.event().and_then(|e| e.seq());
    let last = seq_of(&next().await).expect("a live event");

    // The server goes away; three events happen; it comes back.
    server.stop().await;
    for n in 1..4 {
        hub.publish(&[numbered(&pod, n)]);
    }
    let server = Server::start(&daemon, &socket).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(seq_of(&next().await).expect("replayed events"));
    }
    assert_eq!(got, vec![last + 1, last + 2, last + 3]);
    assert_eq!(
        next().await,
        Delivery::Synced(hub.resume_token()),
        "the replay's end, for a watch that asked for an initial state"
    );
    assert_eq!(watch.reconnects(), 1);

    // A restart: a new generator, a new run.
    server.stop().await;
    drop(hub);
    let restarted = Daemon::new(
        Pleg::new(runtime, Config::generic()).expect("valid config"),
        "fake",
        "",
    );
    restarted.pleg.relist().await.expect("the fake lists");
    let server = Server::start(&restarted, &socket).await;
    let mut next = async || {
        within("the next delivery", watch.next())
            .await
            .expect("never ends")
            .expect("readable")
    };
    assert_eq!(
        next().await,
        Delivery::resync(crate::ResyncReason::EpochChanged, 0, None)
    );
    assert!(matches!(next().await, Delivery::Initial(_)));
    assert_eq!(
        next().await,
        Delivery::Synced(restarted.pleg.hub().resume_token()),
        "the first relist's start of c1 came as initial state, not as a live event"
    );
    assert_eq!(watch.reconnects(), 2);
    server.stop().await;
}

/// A monitor kept past its call: the client goes away, a container dies
/// and its next attempt starts meanwhile, and a client that attaches later
/// gets the report with the recovery in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_monitor_sees_a_recovery_while_its_client_is_away() {
    use crate::model::{Container, ContainerState, Pod};
    let dir = temp_dir();
    let meta = PodMeta::new("p", "web", "default");
    let listed = |state: ContainerState, attempts: u32| {
        (0..attempts).fold(Pod::new(meta.clone()), |pod, attempt| {
            let state = if attempt + 1 == attempts {
                state
            } else {
                ContainerState::Exited
            };
            pod.with_container(
                Container::new(format!("app-{attempt}"), "app", state).with_attempt(attempt),
            )
        })
    };
    let runtime = FakeRuntime::with_pods(vec![listed(ContainerState::Running, 1)]);
    let pleg = Pleg::new(runtime.clone(), Config::generic()).expect("valid config");
    pleg.relist().await.expect("the fake lists");
    let daemon = Daemon::new(pleg, "fake", "");
    let server = Server::start(&daemon, &dir.path().join("pleg.sock")).await;
    let mut client = server.client().await;
    let filter = Filter::all().with_namespace("default");
    let mut monitor = within(
        "monitor",
        client.monitor_kept(&filter, Duration::from_secs(60)),
    )
    .await
    .expect("a kept monitor");
    let first = within("the first counts", monitor.next())
        .await
        .expect("open")
        .expect("readable");
    assert!(
        matches!(first, super::MonitorItem::Progress(_)),
        "{first:?}"
    );
    let id = monitor
        .monitor_id()
        .expect("a kept monitor is named")
        .to_owned();
    drop(monitor);

    // Away: the container dies, its next attempt starts.
    runtime.set_pods(vec![listed(ContainerState::Exited, 1)]);
    daemon.pleg.relist().await.expect("the fake lists");
    runtime.set_pods(vec![listed(ContainerState::Running, 2)]);
    daemon.pleg.relist().await.expect("the fake lists");

    let mut back = within("attach", client.attach_monitor(&id))
        .await
        .expect("the daemon kept it");
    let report = within("the report", async {
        loop {
            match back.next().await.expect("open").expect("readable") {
                super::MonitorItem::Report(report) => return report,
                super::MonitorItem::Progress(_) => {}
            }
        }
    })
    .await;
    assert_eq!(report.recovered.len(), 1, "{report:?}");
    assert!(report.unrecovered.is_empty(), "{report:?}");
    assert_eq!(report.recovered[0].dead_id.as_str(), "app-0");
    assert_eq!(back.monitor_id(), Some(id.as_str()));

    match client.attach_monitor("no-such-monitor").await {
        Err(ClientError::Rpc { code, message, .. }) => {
            assert_eq!(code, tonic::Code::NotFound);
            assert!(message.starts_with("attach: "), "{message}");
        }
        other => panic!("expected NotFound, got {:?}", other.map(|_| ())),
    }
    server.stop().await;
}
