//! The fake CRI server over a real tonic client.

use std::time::SystemTime;

use k8s_cri::v1::ContainerEventType;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Response};

use super::*;
use crate::wait::eventually;

const PATIENCE: Duration = Duration::from_secs(5);

async fn connect(server: &FakeCriServer) -> RuntimeServiceClient<Channel> {
    let channel = Endpoint::from_shared(server.endpoint())
        .expect("a valid endpoint")
        .connect()
        .await
        .expect("the fake CRI server accepts connections");
    RuntimeServiceClient::new(channel)
}

async fn version(client: &mut RuntimeServiceClient<Channel>) -> Result<VersionResponse, Status> {
    let call = client.version(cri::VersionRequest::default());
    match tokio::time::timeout(PATIENCE, call).await {
        Ok(answer) => answer.map(Response::into_inner),
        Err(_) => panic!("Version did not answer in time"),
    }
}

/// A channel whose connection was cut gets back on its own. Its first
/// call may still fail: one dispatched before the client noticed the
/// close ends `Cancelled` ("connection closed"), and after a pause the
/// failed reconnect attempt is reported once.
async fn reconnects(client: &mut RuntimeServiceClient<Channel>) {
    let mut failures = Vec::new();
    for _ in 0..3 {
        match version(client).await {
            Ok(_) => return,
            Err(status) => failures.push(status),
        }
    }
    panic!("the channel did not reconnect: {failures:?}");
}

async fn next_event(
    stream: &mut tonic::Streaming<ContainerEventResponse>,
) -> Result<Option<ContainerEventResponse>, Status> {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("the event stream answers in time")
}

fn event(container_id: &str) -> ContainerEventResponse {
    ContainerEventResponse {
        container_id: container_id.to_owned(),
        container_event_type: ContainerEventType::ContainerStartedEvent as i32,
        created_at: wall_clock_ns(),
        ..ContainerEventResponse::default()
    }
}

fn kind(event: &ContainerEventResponse) -> ContainerEventType {
    ContainerEventType::try_from(event.container_event_type).expect("a known event type")
}

fn is_hex_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn the_handle_can_be_shared_across_tasks() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<FakeCriServer>();
}

#[tokio::test]
async fn version_answers_the_default_then_the_scripted_version() {
    let server = FakeCriServer::start().await.expect("server starts");
    assert!(server.endpoint().starts_with("unix:///"));
    assert!(server.socket_path().exists());
    let mut client = connect(&server).await;

    let v = version(&mut client).await.expect("version");
    assert_eq!(v.runtime_name, "fake-cri");
    assert_eq!(v.runtime_api_version, "v1");

    server.set_version(VersionResponse {
        version: "0.1.0".into(),
        runtime_name: "containerd".into(),
        runtime_version: "v1.7.27".into(),
        runtime_api_version: "v1".into(),
    });
    let v = version(&mut client).await.expect("version");
    assert_eq!(v.runtime_name, "containerd");
    assert_eq!(v.runtime_version, "v1.7.27");
    assert_eq!(server.calls(method::VERSION), 2);
}

#[tokio::test]
async fn listings_return_everything_stored_and_respect_filters() {
    let server = FakeCriServer::start().await.expect("server starts");
    let web = sandbox(
        "s1",
        "uid-1",
        "web",
        "default",
        PodSandboxState::SandboxReady,
    );
    server.put_sandbox(web.clone());
    server.put_sandbox(sandbox(
        "s2",
        "uid-2",
        "db",
        "prod",
        PodSandboxState::SandboxNotready,
    ));
    server.put_container(container_in(
        &web,
        "c1",
        "nginx",
        0,
        ContainerState::ContainerRunning,
    ));
    server.put_container(container(
        "c2",
        "s2",
        "pg",
        1,
        ContainerState::ContainerExited,
    ));
    server.put_container(container(
        "c3",
        "s1",
        "sidecar",
        0,
        ContainerState::ContainerCreated,
    ));
    // Upsert keeps the place in the listing.
    server.put_container(container_in(
        &web,
        "c1",
        "nginx",
        0,
        ContainerState::ContainerExited,
    ));
    let mut client = connect(&server).await;

    let all = client
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .expect("list sandboxes")
        .into_inner()
        .items;
    assert_eq!(
        all.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["s1", "s2"]
    );

    let ready = client
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                state: Some(cri::PodSandboxStateValue {
                    state: PodSandboxState::SandboxReady as i32,
                }),
                ..cri::PodSandboxFilter::default()
            }),
        })
        .await
        .expect("list ready sandboxes")
        .into_inner()
        .items;
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].id, "s1");

    let by_label = client
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: HashMap::from([(POD_NAMESPACE_LABEL.into(), "prod".into())]),
                ..cri::PodSandboxFilter::default()
            }),
        })
        .await
        .expect("list by label")
        .into_inner()
        .items;
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].id, "s2");

    let containers = client
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("list containers")
        .into_inner()
        .containers;
    let ids: Vec<_> = containers.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["c1", "c2", "c3"]);
    assert_eq!(containers[0].state, ContainerState::ContainerExited as i32);
    assert_eq!(
        containers[0].labels.get(POD_UID_LABEL).map(String::as_str),
        Some("uid-1")
    );

    let in_s1_exited = client
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: "s1".into(),
                state: Some(cri::ContainerStateValue {
                    state: ContainerState::ContainerExited as i32,
                }),
                ..cri::ContainerFilter::default()
            }),
        })
        .await
        .expect("filtered list")
        .into_inner()
        .containers;
    assert_eq!(in_s1_exited.len(), 1);
    assert_eq!(in_s1_exited[0].id, "c1");

    let by_id = client
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                id: "c3".into(),
                label_selector: HashMap::from([(CONTAINER_NAME_LABEL.into(), "sidecar".into())]),
                ..cri::ContainerFilter::default()
            }),
        })
        .await
        .expect("list by id")
        .into_inner()
        .containers;
    assert_eq!(by_id.len(), 1);

    server.remove_container("c3");
    server.remove_sandbox("s2");
    assert_eq!(server.containers().len(), 2);
    assert_eq!(server.sandboxes().len(), 1);
    server.clear();
    let empty = client
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("list after clear")
        .into_inner()
        .containers;
    assert!(empty.is_empty());
}

#[tokio::test]
async fn statuses_answer_detail_ips_or_not_found() {
    let server = FakeCriServer::start().await.expect("server starts");
    server.put_sandbox(sandbox(
        "s1",
        "uid-1",
        "web",
        "default",
        PodSandboxState::SandboxReady,
    ));
    server.set_sandbox_ips("s1", vec!["10.0.0.5".into(), "fd00::5".into()]);
    server.put_container(container(
        "c1",
        "s1",
        "nginx",
        0,
        ContainerState::ContainerExited,
    ));
    let mut client = connect(&server).await;

    let sandbox_status = client
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: "s1".into(),
            verbose: false,
        })
        .await
        .expect("sandbox status")
        .into_inner()
        .status
        .expect("a status");
    let network = sandbox_status.network.expect("network");
    assert_eq!(network.ip, "10.0.0.5");
    assert_eq!(network.additional_ips[0].ip, "fd00::5");
    assert_eq!(sandbox_status.metadata.expect("metadata").uid, "uid-1");

    // Derived from the listing.
    let derived = client
        .container_status(cri::ContainerStatusRequest {
            container_id: "c1".into(),
            verbose: false,
        })
        .await
        .expect("container status")
        .into_inner()
        .status
        .expect("a status");
    assert_eq!(derived.state, ContainerState::ContainerExited as i32);
    assert_eq!(
        (derived.exit_code, derived.reason.as_str()),
        (0, "Completed")
    );

    // Scripted detail.
    server.set_container_status(ContainerStatus {
        id: "c1".into(),
        state: ContainerState::ContainerExited as i32,
        exit_code: 1,
        reason: "Error".into(),
        finished_at: 42,
        ..ContainerStatus::default()
    });
    let detail = client
        .container_status(cri::ContainerStatusRequest {
            container_id: "c1".into(),
            verbose: false,
        })
        .await
        .expect("container status")
        .into_inner()
        .status
        .expect("a status");
    assert_eq!((detail.exit_code, detail.finished_at), (1, 42));

    let missing_sandbox = client
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: "nope".into(),
            verbose: false,
        })
        .await
        .expect_err("unknown sandbox");
    assert_eq!(missing_sandbox.code(), Code::NotFound);
    let missing_container = client
        .container_status(cri::ContainerStatusRequest {
            container_id: "nope".into(),
            verbose: false,
        })
        .await
        .expect_err("unknown container");
    assert_eq!(missing_container.code(), Code::NotFound);
}

#[tokio::test]
async fn a_scripted_failure_fails_the_given_times_then_calls_succeed() {
    let server = FakeCriServer::start().await.expect("server starts");
    let mut client = connect(&server).await;
    let list = cri::ListContainersRequest::default;

    server.fail(
        method::LIST_CONTAINERS,
        Status::unavailable("restarting"),
        Some(1),
    );
    server.fail(
        "/runtime.v1.RuntimeService/ListContainers",
        Status::deadline_exceeded("slow"),
        Some(2),
    );
    let first = client
        .list_containers(list())
        .await
        .expect_err("first fails");
    assert_eq!(first.code(), Code::Unavailable);
    assert_eq!(first.message(), "restarting");
    for _ in 0..2 {
        let next = client
            .list_containers(list())
            .await
            .expect_err("queued failure");
        assert_eq!(next.code(), Code::DeadlineExceeded);
    }
    client
        .list_containers(list())
        .await
        .expect("failures used up");

    server.fail(method::VERSION, Status::internal("boom"), None);
    for _ in 0..3 {
        assert_eq!(
            version(&mut client)
                .await
                .expect_err("until cleared")
                .code(),
            Code::Internal
        );
    }
    server.clear_faults();
    version(&mut client).await.expect("cleared");

    // Every call is counted, failed ones included.
    assert_eq!(server.calls(method::LIST_CONTAINERS), 4);
    assert_eq!(server.calls("ListContainers"), 4);
    assert_eq!(server.calls(method::VERSION), 4);
    assert_eq!(server.calls("NoSuchMethod"), 0);
    assert_eq!(server.total_calls(), 8);
    server.reset_calls();
    assert_eq!(server.total_calls(), 0);
}

#[test]
#[should_panic(expected = "not a runtime.v1.RuntimeService method")]
fn a_misspelt_method_fails_the_test() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let server = FakeCriServer::start().await.expect("server starts");
        server.fail("ListContainer", Status::internal("typo"), None);
    });
}

#[tokio::test]
async fn a_delay_holds_the_answer_back() {
    let server = FakeCriServer::start().await.expect("server starts");
    let mut client = connect(&server).await;
    let delay = Duration::from_millis(150);
    server.delay(method::VERSION, delay);
    let started = tokio::time::Instant::now();
    version(&mut client).await.expect("delayed version");
    assert!(started.elapsed() >= delay);

    // A delayed failure is delayed too, and counted when it arrives.
    server.fail(method::VERSION, Status::unavailable("later"), Some(1));
    let started = tokio::time::Instant::now();
    let mut delayed = client.clone();
    let pending = tokio::spawn(async move { version(&mut delayed).await });
    eventually("the delayed call to be counted", PATIENCE, || {
        (server.calls(method::VERSION) == 2).then_some(())
    })
    .await;
    let answer = pending.await.expect("the call ran");
    assert_eq!(answer.expect_err("fails").code(), Code::Unavailable);
    assert!(started.elapsed() >= delay);

    server.delay(method::VERSION, Duration::ZERO);
    let started = tokio::time::Instant::now();
    version(&mut client).await.expect("no delay");
    assert!(started.elapsed() < delay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_connections_cuts_live_calls_and_streams_and_keeps_serving() {
    let server = FakeCriServer::start().await.expect("server starts");
    let mut client = connect(&server).await;
    version(&mut client).await.expect("connected");
    assert_eq!(server.connections(), 1);

    // A call parked in the server and an open stream, on one connection.
    server.delay(method::LIST_CONTAINERS, Duration::from_secs(60));
    let mut parked = client.clone();
    let in_flight = tokio::spawn(async move {
        parked
            .list_containers(cri::ListContainersRequest::default())
            .await
    });
    let mut events = client
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("stream opens")
        .into_inner();
    eventually("the parked call", PATIENCE, || {
        (server.calls(method::LIST_CONTAINERS) == 1).then_some(())
    })
    .await;
    assert_eq!(server.event_streams(), 1);

    assert_eq!(server.drop_connections(), 1);

    let cut = tokio::time::timeout(PATIENCE, in_flight)
        .await
        .expect("the parked call ends at once")
        .expect("the task ran");
    let status = cut.expect_err("the parked call fails");
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Internal
        ),
        "unexpected status {status:?}"
    );
    let ended = next_event(&mut events).await;
    assert!(
        ended.is_err(),
        "the stream ends with an error, got {ended:?}"
    );
    assert_eq!(server.event_streams(), 0);
    assert_eq!(server.connections(), 0);

    // An event pushed now waits for the next stream.
    server.push_event(event("while-disconnected"));
    assert_eq!(server.buffered_events(), 1);

    // Still serving: the same channel reconnects, and so does a new one.
    server.clear_faults();
    reconnects(&mut client).await;
    let mut events = client
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("stream opens again")
        .into_inner();
    let got = next_event(&mut events)
        .await
        .expect("an event")
        .expect("open");
    assert_eq!(got.container_id, "while-disconnected");
    // Kept until the counts are read: a dropped client closes its
    // connection in the background.
    let mut fresh = connect(&server).await;
    version(&mut fresh).await.expect("a new connection works");
    assert_eq!(server.connections_accepted(), 3);
    assert_eq!(server.connections(), 2);
}

#[tokio::test(start_paused = true)]
async fn delays_run_on_tokio_time_so_paused_tests_do_not_wait() {
    let server = FakeCriServer::start().await.expect("server starts");
    let mut client = connect(&server).await;
    server.delay(method::VERSION, Duration::from_secs(3600));
    let wall = SystemTime::now();
    let started = tokio::time::Instant::now();
    client
        .version(cri::VersionRequest::default())
        .await
        .expect("delayed version");
    assert!(started.elapsed() >= Duration::from_secs(3600));
    let waited = wall.elapsed().unwrap_or_default();
    assert!(waited < PATIENCE, "waited {waited:?} of wall-clock time");
}

#[tokio::test]
async fn pause_refuses_connections_until_resume() {
    let server = FakeCriServer::start().await.expect("server starts");
    let mut client = connect(&server).await;
    version(&mut client).await.expect("connected");
    let mut events = client
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("stream opens")
        .into_inner();

    server.pause().await;
    assert!(!server.is_serving());
    assert!(!server.socket_path().exists());
    assert!(next_event(&mut events).await.is_err());
    assert!(version(&mut client).await.is_err());
    let refused = Endpoint::from_shared(server.endpoint())
        .expect("a valid endpoint")
        .connect()
        .await;
    assert!(refused.is_err());
    server.pause().await; // idempotent

    server.resume().await.expect("serves again");
    server.resume().await.expect("idempotent");
    assert!(server.is_serving());
    assert!(server.socket_path().exists());
    version(&mut connect(&server).await)
        .await
        .expect("a new connection works");
    reconnects(&mut client).await;
}

#[tokio::test]
async fn events_pushed_before_any_stream_reach_the_next_stream_first() {
    let server = FakeCriServer::start().await.expect("server starts");
    server.push_event(event("a"));
    server.push_event(event("b"));
    assert_eq!(server.buffered_events(), 2);
    let mut client = connect(&server).await;

    let mut first = client
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("stream opens")
        .into_inner();
    assert_eq!(server.event_streams(), 1);
    assert_eq!(server.buffered_events(), 0);
    server.push_event(event("c"));
    for id in ["a", "b", "c"] {
        let got = next_event(&mut first)
            .await
            .expect("an event")
            .expect("open");
        assert_eq!(got.container_id, id);
    }

    // A second stream gets what is pushed from now on, like the first.
    let mut second = client
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("second stream opens")
        .into_inner();
    assert_eq!(server.event_streams(), 2);
    server.push_event(event("d"));
    for stream in [&mut first, &mut second] {
        let got = next_event(stream).await.expect("an event").expect("open");
        assert_eq!(got.container_id, "d");
    }

    server.end_event_streams(Some(Status::unavailable("runtime restarting")));
    assert_eq!(server.event_streams(), 0);
    for stream in [&mut first, &mut second] {
        let ended = next_event(stream).await.expect_err("ended with the error");
        assert_eq!(ended.code(), Code::Unavailable);
    }

    let mut third = client
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("third stream opens")
        .into_inner();
    server.end_event_streams(None);
    assert!(next_event(&mut third).await.expect("clean end").is_none());
    assert_eq!(server.calls(method::GET_CONTAINER_EVENTS), 3);
}

#[tokio::test]
async fn the_backlog_is_bounded() {
    let server = FakeCriServer::start().await.expect("server starts");
    for i in 0..EVENT_BACKLOG + 5 {
        server.push_event(event(&i.to_string()));
    }
    assert_eq!(server.buffered_events(), EVENT_BACKLOG);
    assert_eq!(server.dropped_events(), 5);
}

#[tokio::test]
async fn events_can_be_unimplemented_like_containerd_1_6() {
    let server = FakeCriServer::start().await.expect("server starts");
    server.set_events_unimplemented(true);
    let mut client = connect(&server).await;
    let refused = client
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect_err("no events");
    assert_eq!(refused.code(), Code::Unimplemented);
    assert_eq!(server.calls(method::GET_CONTAINER_EVENTS), 1);

    // Driver RPCs generate no events then.
    client
        .run_pod_sandbox(run_request("web", "uid-1"))
        .await
        .expect("sandbox runs");
    assert_eq!(server.buffered_events(), 0);

    server.set_events_unimplemented(false);
    client
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("events again");
}

#[tokio::test]
async fn other_methods_are_unimplemented_and_counted() {
    let server = FakeCriServer::start().await.expect("server starts");
    let mut client = connect(&server).await;
    let answer = client
        .exec_sync(cri::ExecSyncRequest::default())
        .await
        .expect_err("unimplemented");
    assert_eq!(answer.code(), Code::Unimplemented);
    let answer = client
        .list_container_stats(cri::ListContainerStatsRequest::default())
        .await
        .expect_err("unimplemented");
    assert_eq!(answer.code(), Code::Unimplemented);
    let status = client
        .status(cri::StatusRequest::default())
        .await
        .expect("status")
        .into_inner();
    let conditions = status.status.expect("conditions").conditions;
    assert!(conditions.iter().all(|c| c.status));
    assert_eq!(server.calls(method::EXEC_SYNC), 1);
    assert_eq!(server.calls(method::LIST_CONTAINER_STATS), 1);
    assert_eq!(server.total_calls(), 3);
}

fn run_request(name: &str, uid: &str) -> cri::RunPodSandboxRequest {
    cri::RunPodSandboxRequest {
        config: Some(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            ..cri::PodSandboxConfig::default()
        }),
        runtime_handler: String::new(),
    }
}

fn create_request(sandbox_id: &str, name: &str) -> cri::CreateContainerRequest {
    cri::CreateContainerRequest {
        pod_sandbox_id: sandbox_id.into(),
        config: Some(cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: "nginx:1.27".into(),
                ..cri::ImageSpec::default()
            }),
            ..cri::ContainerConfig::default()
        }),
        sandbox_config: None,
    }
}

#[tokio::test]
async fn driver_rpcs_walk_a_pod_through_its_life_with_containerd_events() {
    use ContainerEventType::{
        ContainerCreatedEvent as Created, ContainerDeletedEvent as Deleted,
        ContainerStartedEvent as Started, ContainerStoppedEvent as Stopped,
    };
    let server = FakeCriServer::start().await.expect("server starts");
    let mut client = connect(&server).await;
    let mut stream = client
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("stream opens")
        .into_inner();
    let mut seen = Vec::new();
    let mut expect = async |stream: &mut tonic::Streaming<ContainerEventResponse>,
                            id: &str,
                            want: ContainerEventType| {
        let got = next_event(stream).await.expect("an event").expect("open");
        assert_eq!((got.container_id.as_str(), kind(&got)), (id, want));
        seen.push(got.created_at);
        got
    };

    let sb = client
        .run_pod_sandbox(run_request("web", "uid-1"))
        .await
        .expect("sandbox runs")
        .into_inner()
        .pod_sandbox_id;
    assert!(is_hex_id(&sb), "{sb}");
    expect(&mut stream, &sb, Created).await;
    let started = expect(&mut stream, &sb, Started).await;
    let status = started.pod_sandbox_status.expect("sandbox status");
    assert_eq!(status.state, PodSandboxState::SandboxReady as i32);
    assert!(status.network.expect("network").ip.starts_with("10.88."));

    let nginx = client
        .create_container(create_request(&sb, "nginx"))
        .await
        .expect("created")
        .into_inner()
        .container_id;
    assert!(is_hex_id(&nginx));
    assert_ne!(nginx, sb);
    let created = expect(&mut stream, &nginx, Created).await;
    assert_eq!(created.containers_statuses.len(), 1);
    assert_eq!(
        created.containers_statuses[0].state,
        ContainerState::ContainerCreated as i32
    );

    let start = |id: &str| cri::StartContainerRequest {
        container_id: id.into(),
    };
    client
        .start_container(start(&nginx))
        .await
        .expect("started");
    let running = expect(&mut stream, &nginx, Started).await;
    assert!(running.containers_statuses[0].started_at > 0);
    let again = client
        .start_container(start(&nginx))
        .await
        .expect_err("not created");
    assert_eq!(again.code(), Code::FailedPrecondition);

    client
        .stop_container(cri::StopContainerRequest {
            container_id: nginx.clone(),
            timeout: 30,
        })
        .await
        .expect("stopped");
    let stopped = expect(&mut stream, &nginx, Stopped).await;
    let nginx_status = &stopped.containers_statuses[0];
    assert_eq!(nginx_status.state, ContainerState::ContainerExited as i32);
    assert_eq!(
        (nginx_status.exit_code, nginx_status.reason.as_str()),
        (137, "Error")
    );
    assert!(nginx_status.finished_at >= nginx_status.started_at);
    // Stopping again is a no-op without an event.
    client
        .stop_container(cri::StopContainerRequest {
            container_id: nginx.clone(),
            timeout: 0,
        })
        .await
        .expect("idempotent");

    // A container that exits by itself.
    let job = client
        .create_container(create_request(&sb, "job"))
        .await
        .expect("created")
        .into_inner()
        .container_id;
    expect(&mut stream, &job, Created).await;
    client.start_container(start(&job)).await.expect("started");
    expect(&mut stream, &job, Started).await;
    assert!(server.exit_container(&job, 0));
    assert!(!server.exit_container(&job, 0), "not running any more");
    let exited = expect(&mut stream, &job, Stopped).await;
    let job_status = exited
        .containers_statuses
        .iter()
        .find(|c| c.id == job)
        .expect("job status");
    assert_eq!(
        (job_status.exit_code, job_status.reason.as_str()),
        (0, "Completed")
    );

    // Removing a running container stops it first.
    let sidecar = client
        .create_container(create_request(&sb, "sidecar"))
        .await
        .expect("created")
        .into_inner()
        .container_id;
    expect(&mut stream, &sidecar, Created).await;
    client
        .start_container(start(&sidecar))
        .await
        .expect("started");
    expect(&mut stream, &sidecar, Started).await;
    client
        .remove_container(cri::RemoveContainerRequest {
            container_id: sidecar.clone(),
        })
        .await
        .expect("removed");
    expect(&mut stream, &sidecar, Stopped).await;
    let deleted = expect(&mut stream, &sidecar, Deleted).await;
    assert!(deleted.containers_statuses.iter().all(|c| c.id != sidecar));
    client
        .remove_container(cri::RemoveContainerRequest {
            container_id: sidecar.clone(),
        })
        .await
        .expect("removing again succeeds");

    // Stopping the sandbox kills what still runs, then the sandbox.
    let late = client
        .create_container(create_request(&sb, "late"))
        .await
        .expect("created")
        .into_inner()
        .container_id;
    expect(&mut stream, &late, Created).await;
    client.start_container(start(&late)).await.expect("started");
    expect(&mut stream, &late, Started).await;
    let stop_sandbox = || cri::StopPodSandboxRequest {
        pod_sandbox_id: sb.clone(),
    };
    client
        .stop_pod_sandbox(stop_sandbox())
        .await
        .expect("sandbox stops");
    expect(&mut stream, &late, Stopped).await;
    let sandbox_stopped = expect(&mut stream, &sb, Stopped).await;
    let status = sandbox_stopped.pod_sandbox_status.expect("sandbox status");
    assert_eq!(status.state, PodSandboxState::SandboxNotready as i32);
    assert_eq!(status.network.expect("network").ip, "");
    client
        .stop_pod_sandbox(stop_sandbox())
        .await
        .expect("idempotent");
    let refused = client
        .create_container(create_request(&sb, "too-late"))
        .await
        .expect_err("sandbox not ready");
    assert_eq!(refused.code(), Code::FailedPrecondition);

    // Removing the sandbox removes its containers, then itself.
    let remove_sandbox = || cri::RemovePodSandboxRequest {
        pod_sandbox_id: sb.clone(),
    };
    client
        .remove_pod_sandbox(remove_sandbox())
        .await
        .expect("removed");
    for id in [&nginx, &job, &late] {
        expect(&mut stream, id, Deleted).await;
    }
    let gone = expect(&mut stream, &sb, Deleted).await;
    assert!(gone.pod_sandbox_status.is_none());
    assert!(gone.containers_statuses.is_empty());
    client
        .remove_pod_sandbox(remove_sandbox())
        .await
        .expect("idempotent");
    assert!(server.sandboxes().is_empty());
    assert!(server.containers().is_empty());

    let missing = client
        .stop_pod_sandbox(stop_sandbox())
        .await
        .expect_err("gone");
    assert_eq!(missing.code(), Code::NotFound);
    let missing = client
        .stop_container(cri::StopContainerRequest {
            container_id: nginx.clone(),
            timeout: 0,
        })
        .await
        .expect_err("gone");
    assert_eq!(missing.code(), Code::NotFound);

    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "timestamps increase: {seen:?}"
    );
    assert_eq!(server.buffered_events(), 0);
    assert_eq!(server.calls(method::CREATE_CONTAINER), 5);
    assert_eq!(server.calls(method::START_CONTAINER), 5);
}

#[tokio::test]
async fn empty_and_odd_requests_never_break_the_server() {
    let server = FakeCriServer::start().await.expect("server starts");
    server.put_sandbox(PodSandbox {
        state: 99,
        ..PodSandbox::default()
    });
    server.put_container(Container {
        state: -4,
        ..Container::default()
    });
    server.set_container_status(ContainerStatus::default());
    server.set_sandbox_ips("", Vec::new());
    let mut client = connect(&server).await;

    let listed = client
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter::default()),
        })
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 1);
    client
        .pod_sandbox_status(cri::PodSandboxStatusRequest::default())
        .await
        .expect("the empty id is stored");
    client
        .container_status(cri::ContainerStatusRequest::default())
        .await
        .expect("the empty id is stored");

    let run = client
        .run_pod_sandbox(cri::RunPodSandboxRequest::default())
        .await
        .expect_err("no config");
    assert_eq!(run.code(), Code::InvalidArgument);
    let create = client
        .create_container(cri::CreateContainerRequest::default())
        .await
        .expect_err("sandbox \"\" is not ready");
    assert_eq!(create.code(), Code::FailedPrecondition);
    let start = client
        .start_container(cri::StartContainerRequest::default())
        .await
        .expect_err("state -4 is not created");
    assert_eq!(start.code(), Code::FailedPrecondition);
    let _ = client
        .stop_container(cri::StopContainerRequest::default())
        .await
        .expect("a stopped container stops");
    let _ = client
        .stop_pod_sandbox(cri::StopPodSandboxRequest::default())
        .await
        .expect("stops");
    let _ = client
        .remove_container(cri::RemoveContainerRequest::default())
        .await
        .expect("removes");
    let _ = client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest::default())
        .await
        .expect("removes");
    assert!(server.containers().is_empty());
    assert!(!server.exit_container("", 1));
    version(&mut client).await.expect("still serving");
}

#[tokio::test]
async fn dropping_the_server_removes_its_socket_and_directory() {
    let server = FakeCriServer::start().await.expect("server starts");
    let socket = server.socket_path().to_owned();
    let dir = socket.parent().expect("a directory").to_owned();
    let mut client = connect(&server).await;
    version(&mut client).await.expect("connected");
    let other = FakeCriServer::start()
        .await
        .expect("a second server starts");
    assert_ne!(other.socket_path(), socket);

    drop(server);
    assert!(!socket.exists());
    assert!(!dir.exists());
    assert!(version(&mut client).await.is_err());
    assert!(other.socket_path().exists());
}

#[tokio::test]
async fn start_at_serves_on_the_given_path_and_replaces_a_stale_socket() {
    let dir = tempfile::tempdir().expect("a directory");
    let path = dir.path().join("containerd.sock");
    // A stale socket left by a crashed runtime.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("stale socket"));
    assert!(path.exists());

    let server = FakeCriServer::start_at(&path).await.expect("server starts");
    assert_eq!(server.socket_path(), path);
    assert_eq!(server.endpoint(), format!("unix://{}", path.display()));
    version(&mut connect(&server).await).await.expect("serves");

    // A restarted runtime on the same path: the old handle's drop leaves
    // the new socket alone.
    server.pause().await;
    let restarted = FakeCriServer::start_at(&path).await.expect("restarts");
    drop(server);
    assert!(path.exists());
    version(&mut connect(&restarted).await)
        .await
        .expect("serves");
    drop(restarted);
    assert!(!path.exists());
    assert!(dir.path().exists(), "start_at leaves the directory alone");
    dir.close().expect("cleanup");
}
