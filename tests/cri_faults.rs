//! The CRI runtime against the fake CRI server: what goes over the wire, what
//! it costs, and how pleg copes with a runtime that misbehaves.

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::{ContainerState as CriState, ContainerStatus, PodSandboxState, VersionResponse};
use pleg::model::{ContainerState, PodUid};
use pleg::runtime::cri::{ConnectError, CriConfig, CriRuntime};
use pleg::runtime::{CriMethod, RpcOutcome};
use pleg::{
    Config, Delivery, EventType, Filter, Pleg, RelistDuration, Runtime, SubscribeOptions,
    Subscription, Unhealthy,
};
use pleg_testkit::fake_cri::{FakeCriServer, container, sandbox};
use pleg_testkit::temp;
use pleg_testkit::wait::eventually;

/// How long a test waits for the generator to get somewhere.
const WAIT: Duration = Duration::from_secs(20);

async fn server() -> FakeCriServer {
    FakeCriServer::start().await.expect("fake CRI server")
}

async fn connect(server: &FakeCriServer) -> Arc<CriRuntime> {
    CriRuntime::connect(CriConfig::new(server.endpoint()))
        .await
        .expect("connect")
}

fn generator(runtime: Arc<CriRuntime>, period: Duration, threshold: Duration) -> Pleg {
    Pleg::new(
        runtime,
        Config::generic().with_relist(RelistDuration {
            relist_period: period,
            relist_threshold: threshold,
        }),
    )
    .expect("valid config")
}

fn manual(runtime: Arc<CriRuntime>) -> Pleg {
    generator(runtime, Duration::from_secs(3600), Duration::from_secs(180))
}

fn subscribe_all(pleg: &Pleg) -> Subscription {
    pleg.subscribe_with(SubscribeOptions::filtered(
        Filter::all().with_container_changed(true),
    ))
    .expect("valid options")
}

fn drain(sub: &mut Subscription) -> Vec<(EventType, String)> {
    std::iter::from_fn(|| sub.try_recv())
        .filter_map(|d| match d {
            Delivery::Event(e) => Some((
                e.kind,
                e.container_id().map(|c| c.to_string()).unwrap_or_default(),
            )),
            _ => None,
        })
        .collect()
}

/// A pod `p<i>` with a ready sandbox `s<i>` and running containers `c<i>a`, `c<i>b`.
fn put_pod(server: &FakeCriServer, i: usize) {
    let sb = format!("s{i}");
    server.put_sandbox(sandbox(
        &sb,
        &format!("uid-{i}"),
        &format!("p{i}"),
        "default",
        PodSandboxState::SandboxReady,
    ));
    for suffix in ["a", "b"] {
        server.put_container(container(
            &format!("c{i}{suffix}"),
            &sb,
            &format!("app-{suffix}"),
            0,
            CriState::ContainerRunning,
        ));
    }
}

#[tokio::test]
async fn relist_without_changes_costs_two_rpcs_and_changed_pods_cost_only_their_status_calls() {
    let server = server().await;
    for i in 0..10 {
        put_pod(&server, i);
    }
    let runtime = connect(&server).await;
    let pleg = manual(runtime.clone());
    pleg.relist().await.expect("first relist");
    // The first relist inspects every new pod: 1 sandbox + 2 containers each.
    assert_eq!(server.calls("PodSandboxStatus"), 10);
    assert_eq!(server.calls("ContainerStatus"), 20);

    server.reset_calls();
    pleg.relist().await.expect("no-change relist");
    assert_eq!(server.calls("ListPodSandbox"), 1);
    assert_eq!(server.calls("ListContainers"), 1);
    assert_eq!(
        server.total_calls(),
        2,
        "a no-change relist is exactly 2 RPCs"
    );

    // k = 3 pods change: one container of each exits.
    server.reset_calls();
    for i in [2, 5, 7] {
        assert!(server.exit_container(&format!("c{i}a"), 1));
    }
    pleg.relist().await.expect("relist");
    assert_eq!(server.calls("ListPodSandbox"), 1);
    assert_eq!(server.calls("ListContainers"), 1);
    assert_eq!(server.calls("PodSandboxStatus"), 3);
    assert_eq!(server.calls("ContainerStatus"), 6);
    assert_eq!(server.total_calls(), 2 + 3 * (1 + 2));
    // Our own counters agree with the server's.
    assert_eq!(runtime.stats().calls_of(CriMethod::ContainerStatus), 20 + 6);
}

#[tokio::test]
async fn pod_identity_comes_from_the_sandbox_and_exit_details_from_container_status() {
    let server = server().await;
    let mut sb = sandbox(
        "sb1",
        "uid-web",
        "web",
        "shop",
        PodSandboxState::SandboxReady,
    );
    sb.labels.insert("app".into(), "web".into());
    server.put_sandbox(sb);
    server.set_sandbox_ips("sb1", vec!["10.1.2.3".into(), "fd00::3".into()]);
    server.put_container(container("c1", "sb1", "app", 2, CriState::ContainerExited));
    server.set_container_status(ContainerStatus {
        id: "c1".into(),
        metadata: Some(k8s_cri::v1::ContainerMetadata {
            name: "app".into(),
            attempt: 2,
        }),
        state: CriState::ContainerExited as i32,
        created_at: 1_000,
        started_at: 2_000,
        finished_at: 3_000,
        exit_code: 42,
        reason: "OOMKilled".into(),
        ..ContainerStatus::default()
    });
    let runtime = connect(&server).await;
    let pleg = manual(runtime);
    let mut sub = pleg.subscribe();
    pleg.relist().await.expect("relist");

    let mut died = None;
    while let Some(Delivery::Event(e)) = sub.try_recv() {
        assert_eq!(e.pod.uid.as_str(), "uid-web");
        assert_eq!(
            (e.pod.name.as_str(), e.pod.namespace.as_str()),
            ("web", "shop")
        );
        assert_eq!(e.pod.labels.get("app").map(String::as_str), Some("web"));
        if e.kind == EventType::ContainerDied {
            died = Some(e);
        }
    }
    let died = died.expect("a first sighting of an exited container is ContainerDied");
    assert_eq!(died.exit_code, Some(42));
    assert_eq!(died.reason.as_deref(), Some("OOMKilled"));
    let c = died.container.as_ref().expect("container");
    assert_eq!((c.name.as_str(), c.attempt), ("app", 2));

    let status = pleg
        .cache()
        .get(&PodUid::new("uid-web"))
        .expect("cached")
        .status;
    assert_eq!(status.ips, ["10.1.2.3", "fd00::3"]);
    let app = status.container_by_name("app").expect("app");
    assert_eq!(app.exit_code, Some(42));
    assert!(app.started_at.is_some() && app.finished_at.is_some());
}

#[tokio::test]
async fn unknown_enum_values_are_counted_and_become_unknown_without_a_panic() {
    let server = server().await;
    let mut sb = sandbox(
        "sb1",
        "uid-1",
        "p1",
        "default",
        PodSandboxState::SandboxReady,
    );
    sb.state = 7;
    server.put_sandbox(sb);
    let mut c = container("c1", "sb1", "app", 0, CriState::ContainerRunning);
    c.state = 42;
    server.put_container(c);
    let runtime = connect(&server).await;
    let pleg = manual(runtime.clone());
    let mut sub = subscribe_all(&pleg);
    pleg.relist().await.expect("relist survives unknown values");

    assert!(
        runtime.stats().unknown_values() >= 2,
        "counted: {}",
        runtime.stats().unknown_values()
    );
    let mut got = drain(&mut sub);
    got.sort();
    assert_eq!(
        got,
        [
            (EventType::ContainerChanged, "c1".to_string()),
            (EventType::ContainerChanged, "sb1".to_string()),
        ]
    );
    let status = pleg
        .cache()
        .get(&PodUid::new("uid-1"))
        .expect("cached")
        .status;
    assert_eq!(status.containers[0].state, ContainerState::Unknown);
}

#[tokio::test]
async fn records_without_ids_or_metadata_are_skipped_and_counted() {
    let server = server().await;
    put_pod(&server, 1);
    // A sandbox without metadata (no pod UID) and its container.
    let mut orphan = sandbox("sb-nometa", "x", "x", "x", PodSandboxState::SandboxReady);
    orphan.metadata = None;
    server.put_sandbox(orphan);
    let mut under_orphan = container(
        "c-nometa",
        "sb-nometa",
        "app",
        0,
        CriState::ContainerRunning,
    );
    under_orphan.labels.clear();
    server.put_container(under_orphan);
    // Empty IDs, and a container without metadata in a good pod.
    server.put_sandbox(sandbox(
        "",
        "uid-empty",
        "e",
        "default",
        PodSandboxState::SandboxReady,
    ));
    server.put_container(container("", "s1", "noid", 0, CriState::ContainerRunning));
    let mut nameless = container("c1c", "s1", "ignored", 0, CriState::ContainerRunning);
    nameless.metadata = None;
    nameless.labels.clear();
    server.put_container(nameless);

    let runtime = connect(&server).await;
    let pleg = manual(runtime.clone());
    let mut sub = pleg.subscribe();
    pleg.relist().await.expect("relist");
    let mut got = drain(&mut sub);
    got.sort();
    assert_eq!(
        got,
        [
            (EventType::ContainerStarted, "c1a".to_string()),
            (EventType::ContainerStarted, "c1b".to_string()),
            (EventType::ContainerStarted, "c1c".to_string()),
            (EventType::ContainerStarted, "s1".to_string()),
        ]
    );
    // The sandbox without metadata and the container in it (which no later
    // relist could place), the empty sandbox ID, the empty container ID.
    assert_eq!(runtime.stats().skipped_records(), 4);
    assert!(pleg.cache().get(&PodUid::new("uid-empty")).is_none());
    assert!(pleg.cache().get(&PodUid::new("x")).is_none());
}

#[tokio::test]
async fn container_removed_between_listing_and_status_is_left_out_not_an_error() {
    let server = server().await;
    put_pod(&server, 1);
    server.fail(
        "ContainerStatus",
        tonic::Status::not_found("container \"c1b\" not found"),
        Some(1),
    );
    let runtime = connect(&server).await;
    let pleg = manual(runtime);
    pleg.relist().await.expect("relist");
    let entry = pleg.cache().get(&PodUid::new("uid-1")).expect("cached");
    assert!(entry.error.is_none(), "{:?}", entry.error);
    assert_eq!(entry.status.containers.len(), 1);
}

#[tokio::test]
async fn failing_list_containers_emits_nothing_and_health_turns_unhealthy_after_the_threshold() {
    let server = server().await;
    put_pod(&server, 1);
    let runtime = connect(&server).await;
    let threshold = Duration::from_millis(800);
    let pleg = generator(runtime, Duration::from_secs(3600), threshold);
    let mut sub = pleg.subscribe();
    pleg.relist().await.expect("first relist");
    drain(&mut sub);

    server.fail(
        "ListContainers",
        tonic::Status::unavailable("runtime is overloaded"),
        None,
    );
    put_pod(&server, 2);
    let err = pleg.relist().await.expect_err("ListContainers fails");
    let text = err.to_string();
    assert!(
        text.contains("ListContainers") && text.contains("runtime is overloaded"),
        "{text}"
    );
    assert!(drain(&mut sub).is_empty(), "a failed relist emits nothing");
    assert!(pleg.healthy().is_ok(), "healthy until the threshold");

    // Past the threshold, with relists still failing: unhealthy, kubelet-style.
    tokio::time::sleep(threshold + Duration::from_millis(200)).await;
    pleg.relist().await.expect_err("still failing");
    let reason = pleg.healthy().expect_err("unhealthy past the threshold");
    assert!(matches!(reason, Unhealthy::Stale { .. }), "{reason:?}");
    let text = reason.to_string();
    assert!(
        text.starts_with("pleg was last seen active ") && text.ends_with("; threshold is 800ms"),
        "{text}"
    );
    assert!(pleg.stats().relist_failures >= 2);

    // The runtime recovers: healthy again, and the missed pod is reported.
    server.clear_faults();
    pleg.relist().await.expect("relist");
    assert!(pleg.healthy().is_ok());
    let mut got = drain(&mut sub);
    got.sort();
    assert_eq!(
        got,
        [
            (EventType::ContainerStarted, "c2a".to_string()),
            (EventType::ContainerStarted, "c2b".to_string()),
            (EventType::ContainerStarted, "s2".to_string()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_slower_than_the_timeout_times_out_and_the_next_relist_runs() {
    let server = server().await;
    put_pod(&server, 1);
    let mut config = CriConfig::new(server.endpoint());
    config.request_timeout = Duration::from_millis(200);
    let runtime = CriRuntime::connect(config).await.expect("connect");
    let pleg = generator(
        runtime.clone(),
        Duration::from_millis(50),
        Duration::from_secs(180),
    );
    let mut sub = pleg.subscribe();
    server.delay("ListPodSandbox", Duration::from_secs(3600));

    let err = pleg.relist().await.expect_err("times out");
    assert_eq!(
        err.to_string(),
        "runtime call ListPodSandbox timed out after 200ms"
    );
    assert_eq!(
        Some(
            &runtime
                .stats()
                .outcome_count(CriMethod::ListPodSandbox, RpcOutcome::Timeout)
        ),
        Some(&1)
    );

    // The loop keeps relisting after timeouts; once the runtime answers in
    // time, the next relist catches up.
    pleg.start().expect("start");
    eventually("three failed relists", WAIT, || {
        (pleg.stats().relist_failures >= 3).then_some(())
    })
    .await;
    server.clear_faults();
    let first = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("events after the runtime recovered");
    assert!(matches!(first, Some(Delivery::Event(e)) if e.kind == EventType::ContainerStarted));
    pleg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_endpoint_is_a_clear_error_and_connect_retrying_waits_for_the_runtime() {
    let dir = temp::dir("missing");
    let path = dir.path().join("cri.sock");
    let endpoint = format!("unix://{}", path.display());

    let err = CriRuntime::connect(CriConfig::new(&endpoint))
        .await
        .expect_err("no socket");
    assert!(matches!(err, ConnectError::NoSocket { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("runtime endpoint {endpoint}: no such socket")
    );
    // A bare path works the same.
    let bare = CriRuntime::connect(CriConfig::new(path.display().to_string()))
        .await
        .expect_err("no socket");
    assert_eq!(bare.to_string(), err.to_string());

    // connect_retrying keeps trying until the runtime appears.
    let retrying = tokio::spawn(CriRuntime::connect_retrying(CriConfig::new(&endpoint)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!retrying.is_finished(), "still waiting for the socket");
    let server = FakeCriServer::start_at(&path).await.expect("server");
    let runtime = tokio::time::timeout(Duration::from_secs(15), retrying)
        .await
        .expect("connected after the socket appeared")
        .expect("task")
        .expect("connect");
    assert!(server.calls("Version") >= 1);
    assert_eq!(
        runtime.version().map(|v| v.runtime_name.as_str()),
        Some("fake-cri")
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relists_report_a_missing_socket_by_path_while_the_runtime_is_gone() {
    let server = server().await;
    put_pod(&server, 1);
    let runtime = connect(&server).await;
    let pleg = manual(runtime);
    pleg.relist().await.expect("relist");
    server.pause().await;
    let mut text = String::new();
    for _ in 0..3 {
        // The first call may fail on the dead connection itself.
        text = pleg.relist().await.expect_err("runtime gone").to_string();
    }
    assert_eq!(
        text,
        format!(
            "runtime call ListPodSandbox failed: runtime endpoint {}: no such socket",
            server.endpoint()
        )
    );
    server.resume().await.expect("resume");
    pleg.relist().await.expect("back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_reconnects_and_the_next_relist_catches_up() {
    let server = server().await;
    put_pod(&server, 1);
    let runtime = connect(&server).await;
    let pleg = generator(runtime, Duration::from_millis(50), Duration::from_secs(180));
    let mut sub = pleg.subscribe();
    pleg.start().expect("start");
    for _ in 0..3 {
        let got = tokio::time::timeout(Duration::from_secs(10), sub.recv()).await;
        assert!(matches!(got, Ok(Some(Delivery::Event(_)))), "{got:?}");
    }
    let accepted = server.connections_accepted();

    // The connection drops, and meanwhile a container dies.
    assert!(server.drop_connections() >= 1);
    assert!(server.exit_container("c1a", 2));
    let died = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("the death is reported after reconnecting");
    match died {
        Some(Delivery::Event(e)) => {
            assert_eq!(e.kind, EventType::ContainerDied);
            assert_eq!(e.container_id().map(|c| c.as_str()), Some("c1a"));
            assert_eq!(e.exit_code, Some(2));
        }
        other => panic!("{other:?}"),
    }
    assert!(server.connections_accepted() > accepted, "reconnected");
    // Exactly once: nothing more after a few more relists.
    let relists = pleg.stats().relists;
    eventually("three more relists", WAIT, || {
        (pleg.stats().relists >= relists + 3).then_some(())
    })
    .await;
    assert!(sub.try_recv().is_none());
    pleg.stop().await;
}

#[tokio::test]
async fn endpoints_that_are_not_cri_v1_are_refused_with_what_came_back() {
    // Version answers Unimplemented: something gRPC, but not CRI v1.
    let server = server().await;
    server.fail(
        "Version",
        tonic::Status::unimplemented("unknown service runtime.v1.RuntimeService"),
        None,
    );
    let err = CriRuntime::connect(CriConfig::new(server.endpoint()))
        .await
        .expect_err("not CRI");
    let text = err.to_string();
    assert!(matches!(err, ConnectError::NotCri { .. }), "{err:?}");
    assert!(
        text.contains(&server.endpoint())
            && text.contains("expected an answer to runtime.v1.RuntimeService/Version")
            && text.contains("Unimplemented: unknown service runtime.v1.RuntimeService"),
        "{text}"
    );

    // A runtime that reports another API version.
    let old = self::server().await;
    old.set_version(VersionResponse {
        version: "0.1.0".into(),
        runtime_name: "oldd".into(),
        runtime_version: "0.9".into(),
        runtime_api_version: "v1alpha2".into(),
    });
    let err = CriRuntime::connect(CriConfig::new(old.endpoint()))
        .await
        .expect_err("not v1");
    assert_eq!(
        err.to_string(),
        format!(
            "runtime endpoint {}: expected CRI API v1, but oldd 0.9 speaks \"v1alpha2\"",
            old.endpoint()
        )
    );

    let dir = temp::dir("not-cri");
    // A plain file where the socket should be.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"").expect("file");
    let err = CriRuntime::connect(CriConfig::new(file.display().to_string()))
        .await
        .expect_err("not a socket");
    assert!(err.to_string().contains("is not a unix socket"), "{err}");

    // A socket that speaks something else entirely.
    let path = dir.path().join("garbage.sock");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let garbage = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut conn, _)) = listener.accept().await {
            let _ = conn
                .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\nnot grpc\n")
                .await;
        }
    });
    let mut config = CriConfig::new(path.display().to_string());
    config.connect_timeout = Duration::from_secs(2);
    let err = CriRuntime::connect(config).await.expect_err("not CRI");
    assert!(
        matches!(
            err,
            ConnectError::NotCri { .. } | ConnectError::Timeout { .. }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    garbage.abort();

    // A stale socket file that nobody listens on any more.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    let err = CriRuntime::connect(CriConfig::new(stale.display().to_string()))
        .await
        .expect_err("refused");
    assert!(matches!(err, ConnectError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot connect"), "{err}");

    // And a malformed endpoint is refused before anything is tried.
    let err = CriRuntime::connect(CriConfig::new("tcp://127.0.0.1:1234"))
        .await
        .expect_err("bad scheme");
    assert!(!err.is_retryable());
    assert!(
        err.to_string().contains("scheme tcp:// is not supported"),
        "{err}"
    );
}

#[tokio::test]
async fn an_answer_that_does_not_decode_fails_the_relist_naming_the_call_and_counts_as_internal() {
    let server = server().await;
    put_pod(&server, 1);
    let runtime = connect(&server).await;
    let pleg = manual(runtime.clone());
    let mut sub = subscribe_all(&pleg);
    pleg.relist().await.expect("first relist");
    drain(&mut sub);
    let stats = runtime.stats();
    let ok = |method| stats.outcome_count(method, RpcOutcome::Code(tonic::Code::Ok));
    let internal = |method| stats.outcome_count(method, RpcOutcome::Code(tonic::Code::Internal));
    assert_eq!(
        (ok(CriMethod::ListPodSandbox), ok(CriMethod::ListContainers)),
        (1, 1)
    );

    for (method, garbled) in [
        (CriMethod::ListContainers, "ListContainers"),
        (CriMethod::ListPodSandbox, "ListPodSandbox"),
    ] {
        server.garble(garbled, true);
        put_pod(&server, 2);
        let err = pleg
            .relist()
            .await
            .expect_err("an answer that does not decode");
        let text = err.to_string();
        assert!(text.contains(garbled), "names the call: {text}");
        assert!(
            text.contains(&server.endpoint()),
            "names the runtime: {text}"
        );
        assert_eq!(err.code(), tonic::Code::Internal, "{text}");
        assert_eq!(internal(method), 1, "{garbled} counted as Internal");
        assert!(
            drain(&mut sub).is_empty(),
            "a relist that could not read its answer emits nothing"
        );
        server.garble(garbled, false);
        server.remove_container("c2a");
        server.remove_container("c2b");
        server.remove_sandbox("s2");
    }
    // Each call is counted once: as Internal in the relist that garbled it,
    // as OK in the first relist and the one that garbled the other.
    assert_eq!(
        (ok(CriMethod::ListPodSandbox), ok(CriMethod::ListContainers)),
        (2, 2)
    );

    // Answers decode again: the relist goes on from the last good listing.
    put_pod(&server, 3);
    pleg.relist().await.expect("relist");
    let mut got = drain(&mut sub);
    got.sort();
    assert_eq!(
        got,
        [
            (EventType::ContainerStarted, "c3a".to_string()),
            (EventType::ContainerStarted, "c3b".to_string()),
            (EventType::ContainerStarted, "s3".to_string()),
        ]
    );
}
