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
    let dir = tempfile::Builder::new()
        .prefix("pleg-grpc-test")
        .tempdir()
        .expect("temporary directory");
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
    let event = |n: u32| {
        let mut e = PodLifecycleEvent::new(
            pod.clone(),
            EventType::ContainerStarted,
            EventSource::Relist,
            std::time::SystemTime::now(),
        );
        e.container = Some(ContainerRef {
            id: "ctr".into(),
            name: "ctr".into(),
            attempt: n,
            kind: EntryKind::Container,
        });
        Arc::new(e)
    };
    let mut published: u32 = 0;
    let mut overflowed_at = None;
    while overflowed_at.is_none_or(|at| published < at + 5000) {
        hub.publish(&[event(published)]);
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
    let slot = std::mem::size_of::<Delivery>();
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
