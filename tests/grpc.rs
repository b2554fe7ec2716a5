//! The gRPC subscription API over a real unix socket: a daemon over the
//! scripted runtime, relisted by hand, served with `server::grpc::serve`,
//! and read through the CLI's `Client` and the raw generated client.
//! Real time throughout; every wait is bounded.
//! (The slow-watcher flood publishes into the hub directly, which only the
//! crate can do: it lives in `src/server/grpc/tests.rs`.)

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pleg::model::{Container, ContainerState, Pod, PodMeta, PodUid};
use pleg::runtime::fake::FakeRuntime;
use pleg::select::PodSelector;
use pleg::server::Daemon;
use pleg::server::grpc::{
    self, Client, ClientError, Health, ServeError, WatchStream, pb, pod_listing, pod_listings,
};
use pleg::{
    Config, Delivery, EventSource, EventType, Filter, Mode, Pleg, StreamState, SubscribeOptions,
    Subscription,
};
use pleg_testkit::temp::TempDir;
use tokio::task::JoinHandle;

use ContainerState::*;

/// Bounds every wait: a broken server fails the test instead of hanging it.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A fresh directory for sockets, removed when dropped.
fn temp_dir() -> TempDir {
    pleg_testkit::temp::dir("grpc-test")
}

/// The daemon's socket in `dir`.
fn socket_in(dir: &TempDir) -> PathBuf {
    dir.path().join("pleg.sock")
}

/// A daemon over the scripted runtime, without the event stream, never
/// started: tests relist by hand.
fn daemon() -> (Arc<FakeRuntime>, Daemon) {
    let runtime = FakeRuntime::new();
    let pleg = Pleg::new(runtime.clone(), Config::generic()).expect("valid config");
    let daemon = Daemon::new(pleg, "fake", "");
    (runtime, daemon)
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
                grpc::serve(daemon, &socket, async {
                    let _ = stopped.await;
                })
                .await
            }
        });
        Server::started(socket, stop, task).await
    }

    /// Serves `daemon` on `socket` with these limits.
    async fn start_with(daemon: &Daemon, socket: &Path, limits: grpc::Limits) -> Server {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let bound = grpc::bind(socket).await.expect("bind");
        let task = tokio::spawn({
            let daemon = daemon.clone();
            async move {
                grpc::serve_bound_with(daemon, bound, None, limits, async {
                    let _ = stopped.await;
                })
                .await
            }
        });
        Server::started(socket, stop, task).await
    }

    async fn started(
        socket: &Path,
        stop: tokio::sync::oneshot::Sender<()>,
        task: JoinHandle<Result<(), ServeError>>,
    ) -> Server {
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

    /// The raw generated client.
    async fn raw(&self) -> pb::pleg_client::PlegClient<tonic::transport::Channel> {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("unix://{}", self.socket.display()))
                .expect("endpoint")
                .connect()
                .await
                .expect("raw connect");
        pb::pleg_client::PlegClient::new(channel)
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

fn pod(uid: &str, namespace: &str, app: &str, containers: &[(&str, ContainerState)]) -> Pod {
    let meta = PodMeta::new(uid, format!("{uid}-name"), namespace).with_label("app", app);
    containers.iter().fold(
        Pod::new(meta).with_sandbox(Container::new(
            format!("sb-{uid}"),
            format!("{uid}-name"),
            Running,
        )),
        |p, (id, state)| {
            let mut c = Container::new(*id, format!("{id}-name"), *state);
            if *state == Exited {
                c = c.with_exit(3, "Error");
            }
            p.with_container(c)
        },
    )
}

/// Everything the stream delivers until the daemon ends it cleanly.
async fn read_to_end(stream: &mut WatchStream) -> Vec<Delivery> {
    within("the watch stream to end", async {
        let mut got = Vec::new();
        while let Some(item) = stream.next().await {
            got.push(item.expect("a readable delivery"));
        }
        got
    })
    .await
}

fn triples(deliveries: &[Delivery]) -> Vec<(String, EventType, String)> {
    let mut out: Vec<_> = deliveries
        .iter()
        .filter_map(Delivery::event)
        .map(|e| {
            (
                e.pod.uid.to_string(),
                e.kind,
                e.container_id().map(|c| c.to_string()).unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_watcher_sees_exactly_the_events_its_filter_selects() {
    let dir = temp_dir();
    let (runtime, daemon) = daemon();
    let server = Server::start(&daemon, &socket_in(&dir)).await;

    let filters = [
        Filter::default(),
        Filter::all().with_namespace("shop"),
        Filter::all().with_label("app", "web"),
        Filter::all().with_pod_uids([PodUid::new("b"), PodUid::new("c")]),
        Filter::all()
            .with_kinds([EventType::ContainerDied])
            .with_namespace("shop"),
        // A label selector and a namespace regex, ANDed: pod a only.
        Filter::all().with_selector(
            PodSelector::labels("app notin (db), app")
                .and_then(|s| s.with_namespace_regex("sh.*"))
                .expect("valid selector"),
        ),
    ];
    let mut client = server.client().await;
    let mut watches = Vec::new();
    let mut embedded: Vec<Subscription> = Vec::new();
    for filter in &filters {
        watches.push(
            within("watch", client.watch(filter, 0))
                .await
                .expect("watch"),
        );
        embedded.push(
            daemon
                .pleg
                .subscribe_with(SubscribeOptions::filtered(filter.clone()))
                .expect("valid"),
        );
    }
    assert_eq!(daemon.pleg.hub().subscriber_count(), 2 * filters.len());

    runtime.set_pods(vec![
        pod("a", "shop", "web", &[("a1", Running)]),
        pod("b", "shop", "db", &[("b1", Running)]),
        pod("c", "dev", "web", &[("c1", Running)]),
    ]);
    daemon.pleg.relist().await.expect("relist");
    runtime.set_pods(vec![
        pod("a", "shop", "web", &[("a1", Exited)]),
        pod("b", "shop", "db", &[("b1", Running)]),
        pod("c", "dev", "web", &[("c1", Exited)]),
    ]);
    daemon.pleg.relist().await.expect("relist");

    // Shutting down ends every stream after what was queued for it.
    server.stop().await;
    let mut received = Vec::new();
    for watch in &mut watches {
        received.push(read_to_end(watch).await);
    }
    for ((filter, got), local) in filters.iter().zip(&received).zip(&mut embedded) {
        let expected: Vec<Delivery> = std::iter::from_fn(|| local.try_recv()).collect();
        assert!(!expected.is_empty(), "{filter:?} selects something");
        // The very same events, field by field, in the same order.
        assert_eq!(got, &expected, "filter {filter:?}");
    }

    let ids = |events: &[(&str, EventType, &str)]| -> Vec<(String, EventType, String)> {
        let mut v: Vec<_> = events
            .iter()
            .map(|(u, k, c)| (u.to_string(), *k, c.to_string()))
            .collect();
        v.sort();
        v
    };
    use EventType::*;
    assert_eq!(
        triples(&received[1]),
        ids(&[
            ("a", ContainerStarted, "sb-a"),
            ("a", ContainerStarted, "a1"),
            ("a", ContainerDied, "a1"),
            ("b", ContainerStarted, "sb-b"),
            ("b", ContainerStarted, "b1"),
        ]),
        "namespace shop"
    );
    assert_eq!(
        triples(&received[2]),
        ids(&[
            ("a", ContainerStarted, "sb-a"),
            ("a", ContainerStarted, "a1"),
            ("a", ContainerDied, "a1"),
            ("c", ContainerStarted, "sb-c"),
            ("c", ContainerStarted, "c1"),
            ("c", ContainerDied, "c1"),
        ]),
        "label app=web"
    );
    assert_eq!(
        triples(&received[3]),
        ids(&[
            ("b", ContainerStarted, "sb-b"),
            ("b", ContainerStarted, "b1"),
            ("c", ContainerStarted, "sb-c"),
            ("c", ContainerStarted, "c1"),
            ("c", ContainerDied, "c1"),
        ]),
        "pod uids b, c"
    );
    assert_eq!(
        triples(&received[5]),
        ids(&[
            ("a", ContainerStarted, "sb-a"),
            ("a", ContainerStarted, "a1"),
            ("a", ContainerDied, "a1"),
        ]),
        "app notin (db), app, in a namespace matching sh.*"
    );
    let died = received[4]
        .iter()
        .filter_map(Delivery::event)
        .collect::<Vec<_>>();
    assert_eq!(died.len(), 1, "ContainerDied in shop: a1 only");
    assert_eq!(died[0].kind, ContainerDied);
    assert_eq!(
        (died[0].exit_code, died[0].reason.as_deref()),
        (Some(3), Some("Error"))
    );
    assert_eq!(
        died[0].pod.labels.get("app").map(String::as_str),
        Some("web")
    );
    assert_eq!(died[0].source, EventSource::Relist);
    drop(watches);
    drop(embedded);
    assert_eq!(daemon.pleg.hub().subscriber_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pods_and_get_pod_status_answer_from_the_cache() {
    let dir = temp_dir();
    let (runtime, daemon) = daemon();
    runtime.set_pods(vec![
        pod("a", "shop", "web", &[("a1", Running), ("a0", Exited)]),
        pod("b", "shop", "db", &[("b1", Running)]),
        pod("c", "dev", "web", &[("c1", Running)]),
    ]);
    runtime.set_ips("a", vec!["10.0.0.7".into(), "fd00::7".into()]);
    runtime.set_status_failure("c", Some("sandbox status: deadline exceeded".into()));
    daemon.pleg.relist().await.expect("relist");
    // a0 is removed: its last event stays with the pod.
    runtime.set_pods(vec![
        pod("a", "shop", "web", &[("a1", Running)]),
        pod("b", "shop", "db", &[("b1", Running)]),
        pod("c", "dev", "web", &[("c1", Running)]),
    ]);
    daemon.pleg.relist().await.expect("relist");

    let server = Server::start(&daemon, &socket_in(&dir)).await;
    let mut client = server.client().await;

    let all = within("ListPods", client.list_pods(None))
        .await
        .expect("ListPods");
    // The daemon tells each pod's health (no crash loop here: the
    // status's own); the rest is the cache, as is.
    for listing in &all {
        assert_eq!(
            listing.health,
            Some(pleg::phase::PodHealth::of(&listing.status)),
            "{listing:?}"
        );
    }
    let told = |listings: &[pleg::server::grpc::PodListing]| -> Vec<_> {
        listings
            .iter()
            .cloned()
            .map(|mut l| {
                l.health = None;
                l
            })
            .collect()
    };
    assert_eq!(
        told(&all),
        pod_listings(&daemon.pleg, None),
        "the cache, as is"
    );
    let uids: Vec<_> = all.iter().map(|l| l.status.uid().to_string()).collect();
    assert_eq!(uids, ["c", "a", "b"], "by namespace, then name");
    let a = &all[1];
    assert_eq!(a.status.ips, ["10.0.0.7", "fd00::7"]);
    assert_eq!(a.error, None);
    let last = |id: &str| a.last_event(&id.into()).map(|e| e.kind);
    assert_eq!(last("a1"), Some(EventType::ContainerStarted));
    assert_eq!(
        last("a0"),
        Some(EventType::ContainerRemoved),
        "gone, still told"
    );
    assert_eq!(last("sb-a"), Some(EventType::ContainerStarted));
    let c = &all[0];
    assert!(
        c.error
            .as_deref()
            .is_some_and(|e| e.contains("deadline exceeded")),
        "{:?}",
        c.error
    );

    let shop = within("ListPods shop", client.list_pods(Some("shop")))
        .await
        .expect("ListPods");
    assert_eq!(told(&shop), pod_listings(&daemon.pleg, Some("shop")));
    assert_eq!(shop.len(), 2);

    let uid = PodUid::new("a");
    let one = within("GetPodStatus", client.pod_status(&uid))
        .await
        .expect("GetPodStatus");
    assert_eq!(
        one.as_ref().and_then(|l| l.health.clone()),
        Some(pleg::phase::PodHealth::of(
            &one.as_ref().expect("pod a").status
        ))
    );
    assert_eq!(
        one.map(|l| told(&[l])).and_then(|mut l| l.pop()),
        pod_listing(&daemon.pleg, &uid)
    );
    let none = within("GetPodStatus", client.pod_status(&PodUid::new("nope")))
        .await
        .expect("NotFound is None");
    assert_eq!(none, None);

    let mut raw = server.raw().await;
    let err = within(
        "GetPodStatus unknown",
        raw.get_pod_status(pb::GetPodStatusRequest { uid: "nope".into() }),
    )
    .await
    .expect_err("unknown uid");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("nope"), "{}", err.message());
    let err = within(
        "GetPodStatus empty",
        raw.get_pod_status(pb::GetPodStatusRequest { uid: String::new() }),
    )
    .await
    .expect_err("empty uid");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("uid is empty"), "{}", err.message());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_the_checks_the_mode_and_the_stream() {
    let dir = temp_dir();
    let (_runtime, daemon) = daemon();
    let server = Server::start(&daemon, &socket_in(&dir)).await;
    let mut client = server.client().await;

    let before = within("Health", client.health()).await.expect("Health");
    assert!(!before.healthy);
    let pleg_check = before
        .checks
        .iter()
        .find(|c| c.name == "pleg")
        .expect("pleg check");
    assert!(!pleg_check.ok);
    assert!(
        pleg_check.message.contains("yet to be successful"),
        "{}",
        pleg_check.message
    );

    daemon.pleg.relist().await.expect("relist");
    let after = within("Health", client.health()).await.expect("Health");
    assert_eq!(after, Health::of(&daemon));
    assert!(after.healthy, "{after:?}");
    let names: Vec<_> = after.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["pleg", "runtime", "stream", "pods"]);
    assert_eq!(
        (after.mode, after.stream_state),
        (Mode::Generic, StreamState::Stopped)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_requests_with_unknown_kinds_or_huge_capacity_are_refused() {
    let dir = temp_dir();
    let (_runtime, daemon) = daemon();
    let server = Server::start(&daemon, &socket_in(&dir)).await;
    let mut raw = server.raw().await;
    let refused = |request: pb::WatchRequest| {
        let mut raw = raw.clone();
        async move {
            within("Watch", raw.watch(request))
                .await
                .expect_err("refused")
        }
    };
    let err = refused(pb::WatchRequest {
        kinds: vec![pb::EventType::ContainerDied.into(), 99],
        ..Default::default()
    })
    .await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "kinds[1]: unknown event type 99");
    let err = refused(pb::WatchRequest {
        selector: "app in (web".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with(
            "selector: label selector \"app in (web\": expected ',' or ')' after a value, found the end at column 12"
        ),
        "{}",
        err.message()
    );
    let err = refused(pb::WatchRequest {
        name_regex: "web-(".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("name_regex: name regex \"web-(\": not a valid regex"),
        "{}",
        err.message()
    );
    let err = refused(pb::WatchRequest {
        capacity: 5_000_000,
        ..Default::default()
    })
    .await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("capacity 5000000"),
        "{}",
        err.message()
    );
    assert_eq!(daemon.pleg.hub().subscriber_count(), 0);

    // The Client refuses what the wire cannot say, naming the socket.
    let mut client = server.client().await;
    let err = client
        .watch(&Filter::default(), 2_000_000)
        .await
        .expect_err("capacity");
    assert!(matches!(err, ClientError::InvalidRequest { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&socket_in(&dir).display().to_string()),
        "{err}"
    );
    let accepted = within("Watch", raw.watch(pb::WatchRequest::default())).await;
    assert!(accepted.is_ok());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_watch_client_unsubscribes() {
    let dir = temp_dir();
    let (_runtime, daemon) = daemon();
    let server = Server::start(&daemon, &socket_in(&dir)).await;
    let mut client = server.client().await;
    let watch = within("watch", client.watch(&Filter::default(), 0))
        .await
        .expect("watch");
    let other = within("watch", client.watch(&Filter::default(), 0))
        .await
        .expect("watch");
    let hub = daemon.pleg.hub();
    assert_eq!(hub.subscriber_count(), 2);
    drop(watch);
    within("the daemon to unsubscribe", async {
        while hub.subscriber_count() != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // The connection is still good for the other stream.
    drop(client);
    drop(other);
    within("the daemon to unsubscribe", async {
        while hub.subscriber_count() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_private_and_removed_after_shutdown() {
    let dir = temp_dir();
    let socket = socket_in(&dir);
    let (_runtime, daemon) = daemon();
    let server = Server::start(&daemon, &socket).await;
    let meta = std::fs::symlink_metadata(&socket).expect("socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // A watcher open at shutdown sees a clean end, not an error.
    let mut client = server.client().await;
    let mut watch = within("watch", client.watch(&Filter::default(), 0))
        .await
        .expect("watch");
    server.stop().await;
    assert!(within("end", watch.next()).await.is_none());
    assert!(!socket.exists(), "socket removed");
    assert_eq!(daemon.pleg.hub().subscriber_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_a_live_socket_is_refused() {
    let dir = temp_dir();
    let socket = socket_in(&dir);
    let (_runtime, daemon) = daemon();
    let server = Server::start(&daemon, &socket).await;
    let second = within(
        "the second serve to fail",
        grpc::serve(daemon.clone(), &socket, std::future::pending()),
    )
    .await
    .expect_err("in use");
    // A pleg serves there: it holds the socket's lock file.
    assert!(matches!(second, ServeError::Locked { .. }), "{second}");
    let message = second.to_string();
    assert!(message.contains(&socket.display().to_string()), "{message}");
    assert!(message.contains("in use"), "{message}");
    assert!(message.contains("a pleg daemon running?"), "{message}");
    // The first server is untouched.
    let mut client = server.client().await;
    within("Health", client.health())
        .await
        .expect("still served");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_pleg_left_is_replaced_and_other_files_are_left_alone() {
    let dir = temp_dir();
    let socket = socket_in(&dir);
    // A socket pleg did not make, that nobody serves: refused, left alone.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    let (_runtime, daemon) = daemon();
    let err = within(
        "serve to refuse",
        grpc::serve(daemon.clone(), &socket, std::future::pending()),
    )
    .await
    .expect_err("not pleg's");
    assert!(matches!(err, ServeError::NotOurs { .. }), "{err}");
    assert!(err.to_string().contains("remove it"), "{err}");
    assert!(socket.exists());
    std::fs::remove_file(&socket).expect("removed by hand");

    // One a pleg left when it died: replaced.
    let (listener, file) = grpc::bind(&socket).await.expect("binds").into_parts();
    drop((listener, file));
    assert!(socket.exists());
    let server = Server::start(&daemon, &socket).await;
    let mut client = server.client().await;
    within("Health", client.health()).await.expect("served");
    server.stop().await;
    assert!(!socket.exists());

    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "keep me").expect("file");
    let err = within(
        "serve to refuse",
        grpc::serve(daemon.clone(), &file, std::future::pending()),
    )
    .await
    .expect_err("not a socket");
    assert!(matches!(err, ServeError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&file).expect("kept"), "keep me");

    let missing_dir = dir.path().join("no/such/dir/pleg.sock");
    let err = within(
        "serve to refuse",
        grpc::serve(daemon, &missing_dir, std::future::pending()),
    )
    .await
    .expect_err("no directory");
    assert!(matches!(err, ServeError::Lock { .. }), "{err}");
    assert!(err.to_string().contains("no/such/dir"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_names_the_socket_when_it_cannot_reach_a_pleg_daemon() {
    let dir = temp_dir();
    let missing = socket_in(&dir);
    let err = Client::connect(&missing).await.expect_err("missing");
    assert!(matches!(err, ClientError::NoSocket { .. }), "{err}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );

    let file = dir.path().join("file");
    std::fs::write(&file, "").expect("file");
    let err = Client::connect(&file).await.expect_err("a file");
    assert!(matches!(err, ClientError::NotASocket { .. }), "{err}");

    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("stale socket"));
    let err = within("connect", Client::connect(&stale))
        .await
        .expect_err("nobody");
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("stale.sock"), "{err}");

    // A gRPC server that is not pleg: the fake CRI runtime.
    let cri = pleg_testkit::fake_cri::FakeCriServer::start()
        .await
        .expect("fake CRI");
    let err = within("connect", Client::connect(cri.socket_path()))
        .await
        .expect_err("not pleg");
    assert!(matches!(err, ClientError::NotPleg { .. }), "{err}");
    assert!(err.to_string().contains("not a pleg daemon"), "{err}");
}

/// Waits until the hub has `n` subscribers.
async fn subscribers(daemon: &Daemon, n: usize) {
    within(&format!("{n} subscribers"), async {
        while daemon.pleg.hub().subscriber_count() != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_past_the_limit_fail_resource_exhausted_naming_the_flag_and_a_freed_slot_is_reused()
{
    let dir = temp_dir();
    let (_runtime, daemon) = daemon();
    let limits = grpc::Limits::default()
        .with_max_watches(2)
        .with_max_queued_events(5000);
    let server = Server::start_with(&daemon, &socket_in(&dir), limits).await;
    let mut client = server.client().await;
    let first = within("watch", client.watch(&Filter::default(), 0))
        .await
        .expect("slot 1");
    let second = within("watch", client.watch(&Filter::default(), 0))
        .await
        .expect("slot 2");
    let err = within("watch", client.watch(&Filter::default(), 0))
        .await
        .expect_err("no third slot");
    match &err {
        ClientError::Rpc { code, message, .. } => {
            assert_eq!(*code, tonic::Code::ResourceExhausted, "{err}");
            assert!(
                message.contains("at most 2 streams") && message.contains("--grpc-max-watches"),
                "{message}"
            );
        }
        other => panic!("expected RESOURCE_EXHAUSTED, got {other}"),
    }
    assert_eq!(
        daemon.pleg.hub().subscriber_count(),
        2,
        "the refused one holds nothing"
    );

    // A cancelled stream gives its slot back.
    drop(first);
    subscribers(&daemon, 1).await;
    let third = within("watch", client.watch(&Filter::default(), 0))
        .await
        .expect("the freed slot");

    // The queued-events budget: 2 x 1000 taken, 5000 in all.
    drop(third);
    subscribers(&daemon, 1).await;
    let err = within("watch", client.watch(&Filter::default(), 4001))
        .await
        .expect_err("over the queued-events budget");
    assert!(
        err.to_string().contains("ResourceExhausted")
            && err.to_string().contains("--grpc-max-queued-events"),
        "{err}"
    );
    let big = within("watch", client.watch(&Filter::default(), 4000))
        .await
        .expect("fits exactly");
    drop((second, big));
    subscribers(&daemon, 0).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_capacities_past_the_limits_are_invalid_argument_over_the_wire() {
    let dir = temp_dir();
    let (_runtime, daemon) = daemon();
    let limits = grpc::Limits::default().with_max_capacity(2000);
    let server = Server::start_with(&daemon, &socket_in(&dir), limits).await;
    let mut raw = server.raw().await;
    let err = within(
        "Watch",
        raw.watch(pb::WatchRequest {
            pod_uids: (0..2000).map(|i| format!("uid-{i}")).collect(),
            ..Default::default()
        }),
    )
    .await
    .expect_err("too many UIDs");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "pod_uids has 2000 entries; at most 1024 are allowed"
    );
    let err = within(
        "Watch",
        raw.watch(pb::WatchRequest {
            capacity: 2001,
            ..Default::default()
        }),
    )
    .await
    .expect_err("above the daemon's max capacity");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("--grpc-max-capacity"),
        "{}",
        err.message()
    );
    assert_eq!(daemon.pleg.hub().subscriber_count(), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pods_pages_hold_every_pod_once_even_when_pods_come_and_go_between_pages() {
    let dir = temp_dir();
    let (runtime, daemon) = daemon();
    let name = |i: usize| format!("p{i:03}");
    let pods = |ids: &[usize]| -> Vec<Pod> {
        ids.iter()
            .map(|&i| pod(&name(i), "shop", "web", &[(&format!("c{i:03}"), Running)]))
            .collect()
    };
    // Even numbers first; the odd ones appear between pages.
    let evens: Vec<usize> = (0..50).map(|i| i * 2).collect();
    runtime.set_pods(pods(&evens));
    daemon.pleg.relist().await.expect("relist");
    let server = Server::start(&daemon, &socket_in(&dir)).await;
    let mut client = server.client().await;

    let (first, token) = within("page 1", client.list_pods_page(None, 20, ""))
        .await
        .expect("page 1");
    assert_eq!(first.len(), 20);
    let token = token.expect("more pages");
    // Between pages: p000 (already listed) goes, and every odd pod comes.
    let mut now: Vec<usize> = (1..100).collect();
    now.retain(|&i| i != 0);
    runtime.set_pods(pods(&now));
    daemon.pleg.relist().await.expect("relist");
    let mut seen: Vec<String> = first.iter().map(|l| l.status.uid().to_string()).collect();
    let mut token = Some(token);
    let mut pages = 1;
    while let Some(t) = token {
        let (page, next) = within("next page", client.list_pods_page(None, 20, &t))
            .await
            .expect("page");
        assert!(page.len() <= 20);
        seen.extend(page.iter().map(|l| l.status.uid().to_string()));
        token = next;
        pages += 1;
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no pod twice: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order: {seen:?}");
    for i in &evens {
        assert!(seen.contains(&name(*i)), "{} existed throughout", name(*i));
    }
    assert!(pages >= 4, "{pages} pages");

    // page_size 0 (what an old client sends): everything, no token.
    let (all, next) = within("unpaged", client.list_pods_page(None, 0, ""))
        .await
        .expect("unpaged");
    assert_eq!(all.len(), 99);
    assert_eq!(next, None);
    let mut raw = server.raw().await;
    let old = within(
        "old-style ListPods",
        raw.list_pods(pb::ListPodsRequest {
            namespace: String::new(),
            ..Default::default()
        }),
    )
    .await
    .expect("ListPods")
    .into_inner();
    assert_eq!((old.pods.len(), old.next_page_token.as_str()), (99, ""));
    // The client pages by itself and gets the same.
    assert_eq!(
        within("list_pods", client.list_pods(None))
            .await
            .expect("all"),
        all
    );
    // A larger page is lowered to MAX_PAGE_SIZE; namespaces page too.
    let (shop, _) = within("page", client.list_pods_page(Some("shop"), 1_000_000, ""))
        .await
        .expect("page");
    assert_eq!(shop.len(), 99);

    for bad in ["nonsense", "v1.zz.00.00", "v1.", "v1.61.62"] {
        let err = within("bad token", client.list_pods_page(None, 10, bad))
            .await
            .expect_err("bad token");
        match &err {
            ClientError::Rpc { code, message, .. } => {
                assert_eq!(*code, tonic::Code::InvalidArgument, "{bad}: {err}");
                assert!(message.contains("page_token"), "{message}");
            }
            other => panic!("{bad}: expected INVALID_ARGUMENT, got {other}"),
        }
    }
    server.stop().await;
}

// --- the toolkit's calls: WaitFor, Monitor, TerminalReports, WatchSession ---

fn selection(selector: &str) -> Option<pb::PodSelection> {
    Some(pb::PodSelection {
        selector: selector.into(),
        ..pb::PodSelection::default()
    })
}

/// Relists until `task` has finished, then gives its result.
async fn relist_until_done<T>(pleg: &Pleg, task: JoinHandle<T>) -> T {
    within("the call to answer", async {
        loop {
            pleg.relist().await.expect("listing works");
            if task.is_finished() {
                return task.await.expect("the call's task");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_answers_met_with_the_final_status_or_not_met_with_the_last_one() {
    let dir = temp_dir();
    let (runtime, daemon) = daemon();
    runtime.set_pods(vec![pod("u1", "shop", "web", &[("c1", Created)])]);
    daemon.pleg.relist().await.expect("listing works");
    let server = Server::start(&daemon, &socket_in(&dir)).await;

    let waiting = tokio::spawn({
        let mut raw = server.raw().await;
        async move {
            raw.wait_for(pb::WaitForRequest {
                pods: Some(pb::PodSelection {
                    namespace: "shop".into(),
                    name: "u1-name".into(),
                    ..pb::PodSelection::default()
                }),
                until: Some(pb::wait_for_request::Until::RunningContainer(
                    "c1-name".into(),
                )),
                timeout_ms: 10_000,
            })
            .await
        }
    });
    runtime.set_pods(vec![pod("u1", "shop", "web", &[("c1", Running)])]);
    let answer = relist_until_done(&daemon.pleg, waiting)
        .await
        .expect("an answer")
        .into_inner();
    assert!(answer.met, "{}", answer.message);
    let status = answer.status.expect("the final status");
    assert_eq!(status.phase(), pb::PodPhase::Running);
    assert_eq!(status.health(), pb::PodHealth::Ready);
    assert_eq!(status.containers[0].state(), pb::ContainerState::Running);

    let mut raw = server.raw().await;
    let answer = within(
        "a short wait",
        raw.wait_for(pb::WaitForRequest {
            pods: selection("app=web"),
            until: Some(pb::wait_for_request::Until::RunningContainer(
                "nosuch".into(),
            )),
            timeout_ms: 200,
        }),
    )
    .await
    .expect("not met is an answer")
    .into_inner();
    assert!(!answer.met);
    assert!(answer.waited_ms >= 200, "{}", answer.waited_ms);
    assert!(
        answer.message.contains("not met within"),
        "{}",
        answer.message
    );
    assert_eq!(
        answer.status.and_then(|s| s.pod).map(|p| p.uid).as_deref(),
        Some("u1"),
        "the last status seen"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toolkit_requests_that_make_no_sense_are_refused_naming_the_field() {
    let dir = temp_dir();
    let (_runtime, daemon) = daemon();
    let server = Server::start(&daemon, &socket_in(&dir)).await;
    let mut raw = server.raw().await;
    let running = || Some(pb::wait_for_request::Until::RunningContainer("app".into()));
    let cases = [
        (
            pb::WaitForRequest {
                pods: selection("app in (web,"),
                until: running(),
                timeout_ms: 1000,
            },
            "pods.selector",
        ),
        (
            pb::WaitForRequest {
                pods: None,
                until: None,
                timeout_ms: 1000,
            },
            "until is not set",
        ),
        (
            pb::WaitForRequest {
                pods: None,
                until: running(),
                timeout_ms: 0,
            },
            "timeout_ms",
        ),
        (
            pb::WaitForRequest {
                pods: None,
                until: Some(pb::wait_for_request::Until::PhaseNot(pb::PodPhases {
                    phases: vec![99],
                })),
                timeout_ms: 1000,
            },
            "phase_not.phases[0]",
        ),
        (
            pb::WaitForRequest {
                pods: Some(pb::PodSelection {
                    name: "a".into(),
                    name_regex: "a.*".into(),
                    ..pb::PodSelection::default()
                }),
                until: running(),
                timeout_ms: 1000,
            },
            "pods.name and pods.name_regex",
        ),
    ];
    for (request, named) in cases {
        let status = within("a refusal", raw.wait_for(request))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(named),
            "{named}: {}",
            status.message()
        );
    }
    let status = within(
        "a monitor refusal",
        raw.monitor(pb::MonitorRequest {
            pods: selection("app in (web,"),
            timeout_ms: 1000,
            ..pb::MonitorRequest::default()
        }),
    )
    .await
    .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("pods.selector") && status.message().contains("column 13"),
        "{}",
        status.message()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_streams_progress_then_the_report_of_a_recovered_container() {
    let dir = temp_dir();
    let (runtime, daemon) = daemon();
    let app =
        |id: &str, attempt: u32, state| Container::new(id, "app", state).with_attempt(attempt);
    let web = |containers: Vec<Container>| {
        containers.into_iter().fold(
            Pod::new(PodMeta::new("u1", "web-1", "shop").with_label("app", "web"))
                .with_sandbox(Container::new("sb-u1", "web-1", Running)),
            Pod::with_container,
        )
    };
    runtime.set_pods(vec![web(vec![app("a0", 0, Running)])]);
    daemon.pleg.relist().await.expect("listing works");
    let server = Server::start(&daemon, &socket_in(&dir)).await;
    let mut raw = server.raw().await;
    let mut updates = within(
        "the monitor to start",
        raw.monitor(pb::MonitorRequest {
            pods: selection("app in (web,db)"),
            timeout_ms: 30_000,
            ..pb::MonitorRequest::default()
        }),
    )
    .await
    .expect("a monitor")
    .into_inner();

    let start = within("the first progress", updates.message())
        .await
        .expect("a good stream")
        .expect("an update");
    assert!(
        matches!(
            start.item,
            Some(pb::monitor_update::Item::Progress(pb::MonitorProgress {
                died: 0,
                ..
            }))
        ),
        "{start:?}"
    );
    runtime.set_pods(vec![web(vec![app("a0", 0, Exited)])]);
    daemon.pleg.relist().await.expect("listing works");
    let progress = within("progress", updates.message())
        .await
        .expect("a good stream")
        .expect("an update");
    let Some(pb::monitor_update::Item::Progress(p)) = progress.item else {
        panic!("progress: {progress:?}");
    };
    assert_eq!((p.died, p.recovered, p.pending), (1, 0, 1));

    runtime.set_pods(vec![web(vec![app("a0", 0, Exited), app("a1", 1, Running)])]);
    daemon.pleg.relist().await.expect("listing works");
    let report = within("the report", async {
        loop {
            let update = updates
                .message()
                .await
                .expect("a good stream")
                .expect("an update");
            if let Some(pb::monitor_update::Item::Report(r)) = update.item {
                return r;
            }
        }
    })
    .await;
    let [r] = report.recovered.as_slice() else {
        panic!("one recovery: {report:?}")
    };
    assert_eq!(
        (
            r.container.as_deref(),
            r.dead_id.as_str(),
            r.replacement_id.as_deref()
        ),
        (Some("app"), "a0", Some("a1"))
    );
    assert!(r.recovery_ms.is_some() && report.unrecovered.is_empty() && report.error.is_none());
    assert!(
        within("the end", updates.message())
            .await
            .expect("ends OK")
            .is_none(),
        "the report is the last item"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_reports_stream_one_report_per_end_with_every_exit_code() {
    let dir = temp_dir();
    let (runtime, daemon) = daemon();
    let two = |a: ContainerState, b: ContainerState| {
        let exit = |c: Container, code: i32| {
            if c.state == Exited {
                c.with_exit(code, if code == 0 { "Completed" } else { "Error" })
            } else {
                c
            }
        };
        Pod::new(PodMeta::new("u1", "job", "batch"))
            .with_sandbox(Container::new("sb-u1", "job", Running))
            .with_container(exit(Container::new("ok", "ok", a), 0))
            .with_container(exit(Container::new("bad", "bad", b), 3))
    };
    runtime.set_pods(vec![two(Running, Running)]);
    daemon.pleg.relist().await.expect("listing works");
    let server = Server::start(&daemon, &socket_in(&dir)).await;
    let mut raw = server.raw().await;
    let mut reports = within(
        "the stream",
        raw.terminal_reports(pb::TerminalReportsRequest {
            pods: Some(pb::PodSelection {
                namespace: "batch".into(),
                ..pb::PodSelection::default()
            }),
            capacity: 0,
        }),
    )
    .await
    .expect("a stream")
    .into_inner();
    runtime.set_pods(vec![two(Exited, Exited)]);
    daemon.pleg.relist().await.expect("listing works");
    let item = within("a report", reports.message())
        .await
        .expect("a good stream")
        .expect("an item");
    let Some(pb::terminal_report_event::Item::Report(report)) = item.item else {
        panic!("a report: {item:?}");
    };
    assert_eq!(report.phase(), pb::TerminalPhase::Failed);
    assert_eq!(report.exit_code, Some(3));
    let mut codes: Vec<(String, Option<i32>)> = report
        .containers
        .iter()
        .map(|c| (c.name.clone(), c.exit_code))
        .collect();
    codes.sort();
    assert_eq!(codes, vec![("bad".into(), Some(3)), ("ok".into(), Some(0))]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_has_one_subscriber_at_a_time_and_sees_only_its_pods() {
    let dir = temp_dir();
    let (runtime, daemon) = daemon();
    let server = Server::start(&daemon, &socket_in(&dir)).await;
    let session = |name: &str| pb::WatchSessionRequest {
        session: name.into(),
        ..pb::WatchSessionRequest::default()
    };
    let mut raw = server.raw().await;
    let mut first = within("the session", raw.watch_session(session("s1")))
        .await
        .expect("subscribed")
        .into_inner();
    let refused = within("a second subscriber", raw.watch_session(session("s1")))
        .await
        .expect_err("one at a time");
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
    assert!(refused.message().contains("s1"), "{}", refused.message());

    let labelled = |uid: &str, session: &str| {
        Pod::new(
            PodMeta::new(uid, uid, "lab")
                .with_label("session", session)
                .with_label("component", "db"),
        )
        .with_sandbox(Container::new(format!("sb-{uid}"), uid, Running))
    };
    runtime.set_pods(vec![labelled("mine", "s1"), labelled("theirs", "s2")]);
    daemon.pleg.relist().await.expect("listing works");
    let update = within("an update", first.message())
        .await
        .expect("a good stream")
        .expect("an update");
    let Some(pb::session_update::Item::Event(event)) = update.item else {
        panic!("an event: {update:?}");
    };
    assert_eq!(event.session, "s1");
    assert_eq!(event.component.as_deref(), Some("db"));
    let pod = event.event.and_then(|e| e.pod).expect("the pod");
    assert_eq!(pod.uid, "mine");

    // Once the first stream is gone, the session is free again.
    drop(first);
    within("the session to be free", async {
        loop {
            match raw.watch_session(session("s1")).await {
                Ok(_) => return,
                Err(status) if status.code() == tonic::Code::AlreadyExists => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(status) => panic!("{status:?}"),
            }
        }
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_pods_carry_their_phase_health_and_reason() {
    let dir = temp_dir();
    let (runtime, daemon) = daemon();
    runtime.set_pods(vec![
        pod("u1", "shop", "web", &[("c1", Exited)]),
        pod("u2", "shop", "web", &[("c2", Running)]),
    ]);
    daemon.pleg.relist().await.expect("listing works");
    let server = Server::start(&daemon, &socket_in(&dir)).await;
    let mut raw = server.raw().await;
    let pods = within("a listing", raw.list_pods(pb::ListPodsRequest::default()))
        .await
        .expect("listed")
        .into_inner()
        .pods;
    let summary: Vec<(pb::PodPhase, pb::PodHealth, String)> = pods
        .iter()
        .map(|p| (p.phase(), p.health(), p.health_reason.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (pb::PodPhase::Failed, pb::PodHealth::Failed, "Error".into()),
            (pb::PodPhase::Running, pb::PodHealth::Ready, String::new()),
        ]
    );
    assert!(
        pods[0].health_message.contains("exited with 3"),
        "{}",
        pods[0].health_message
    );
    server.stop().await;
}
