//! The gRPC side of the fake: what every call goes through (it is counted,
//! waits out its scripted delay, then fails if a failure is scripted) and the
//! `RuntimeService` impl, which answers from the [`RuntimeState`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use k8s_cri::v1::{ContainerEventResponse, VersionResponse};
use parking_lot::Mutex;
use tonic::{Request, Response, Status};

use super::events::{EventHub, EventStream, subscribe};
use super::socket::Connections;
use super::state::{RuntimeState, container_not_found, sandbox_not_found};

/// The `RuntimeService` method names, as written in the proto, that calls are
/// counted under and faults are keyed by.
pub mod method {
    /// `Version`.
    pub const VERSION: &str = "Version";
    /// `RunPodSandbox`.
    pub const RUN_POD_SANDBOX: &str = "RunPodSandbox";
    /// `StopPodSandbox`.
    pub const STOP_POD_SANDBOX: &str = "StopPodSandbox";
    /// `RemovePodSandbox`.
    pub const REMOVE_POD_SANDBOX: &str = "RemovePodSandbox";
    /// `PodSandboxStatus`.
    pub const POD_SANDBOX_STATUS: &str = "PodSandboxStatus";
    /// `ListPodSandbox`.
    pub const LIST_POD_SANDBOX: &str = "ListPodSandbox";
    /// `CreateContainer`.
    pub const CREATE_CONTAINER: &str = "CreateContainer";
    /// `StartContainer`.
    pub const START_CONTAINER: &str = "StartContainer";
    /// `StopContainer`.
    pub const STOP_CONTAINER: &str = "StopContainer";
    /// `RemoveContainer`.
    pub const REMOVE_CONTAINER: &str = "RemoveContainer";
    /// `ListContainers`.
    pub const LIST_CONTAINERS: &str = "ListContainers";
    /// `ContainerStatus`.
    pub const CONTAINER_STATUS: &str = "ContainerStatus";
    /// `UpdateContainerResources`.
    pub const UPDATE_CONTAINER_RESOURCES: &str = "UpdateContainerResources";
    /// `ReopenContainerLog`.
    pub const REOPEN_CONTAINER_LOG: &str = "ReopenContainerLog";
    /// `ExecSync`.
    pub const EXEC_SYNC: &str = "ExecSync";
    /// `Exec`.
    pub const EXEC: &str = "Exec";
    /// `Attach`.
    pub const ATTACH: &str = "Attach";
    /// `PortForward`.
    pub const PORT_FORWARD: &str = "PortForward";
    /// `ContainerStats`.
    pub const CONTAINER_STATS: &str = "ContainerStats";
    /// `ListContainerStats`.
    pub const LIST_CONTAINER_STATS: &str = "ListContainerStats";
    /// `PodSandboxStats`.
    pub const POD_SANDBOX_STATS: &str = "PodSandboxStats";
    /// `ListPodSandboxStats`.
    pub const LIST_POD_SANDBOX_STATS: &str = "ListPodSandboxStats";
    /// `UpdateRuntimeConfig`.
    pub const UPDATE_RUNTIME_CONFIG: &str = "UpdateRuntimeConfig";
    /// `Status`.
    pub const STATUS: &str = "Status";
    /// `CheckpointContainer`.
    pub const CHECKPOINT_CONTAINER: &str = "CheckpointContainer";
    /// `GetContainerEvents`.
    pub const GET_CONTAINER_EVENTS: &str = "GetContainerEvents";
    /// `ListMetricDescriptors`.
    pub const LIST_METRIC_DESCRIPTORS: &str = "ListMetricDescriptors";
    /// `ListPodSandboxMetrics`.
    pub const LIST_POD_SANDBOX_METRICS: &str = "ListPodSandboxMetrics";
    /// `RuntimeConfig`.
    pub const RUNTIME_CONFIG: &str = "RuntimeConfig";

    /// Every method of `runtime.v1.RuntimeService`.
    pub const ALL: [&str; 29] = [
        VERSION,
        RUN_POD_SANDBOX,
        STOP_POD_SANDBOX,
        REMOVE_POD_SANDBOX,
        POD_SANDBOX_STATUS,
        LIST_POD_SANDBOX,
        CREATE_CONTAINER,
        START_CONTAINER,
        STOP_CONTAINER,
        REMOVE_CONTAINER,
        LIST_CONTAINERS,
        CONTAINER_STATUS,
        UPDATE_CONTAINER_RESOURCES,
        REOPEN_CONTAINER_LOG,
        EXEC_SYNC,
        EXEC,
        ATTACH,
        PORT_FORWARD,
        CONTAINER_STATS,
        LIST_CONTAINER_STATS,
        POD_SANDBOX_STATS,
        LIST_POD_SANDBOX_STATS,
        UPDATE_RUNTIME_CONFIG,
        STATUS,
        CHECKPOINT_CONTAINER,
        GET_CONTAINER_EVENTS,
        LIST_METRIC_DESCRIPTORS,
        LIST_POD_SANDBOX_METRICS,
        RUNTIME_CONFIG,
    ];

    /// The method named `name`, also given as a gRPC path
    /// (`/runtime.v1.RuntimeService/ListContainers`).
    pub fn canonical(name: &str) -> Option<&'static str> {
        let name = name.trim_start_matches('/');
        let name = name
            .strip_prefix("runtime.v1.RuntimeService/")
            .unwrap_or(name);
        ALL.iter().copied().find(|m| *m == name)
    }
}

// --- the shared server state ---

/// Everything the handlers and the handle share. Lock order: `state` before
/// `events`; nothing holds another lock while taking `state`.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) state: Mutex<RuntimeState>,
    pub(super) faults: Mutex<HashMap<&'static str, MethodFaults>>,
    pub(super) calls: Mutex<HashMap<&'static str, u64>>,
    pub(super) events: Arc<Mutex<EventHub>>,
    pub(super) connections: Arc<Connections>,
}

/// Faults scripted for one method.
#[derive(Debug, Default)]
pub(super) struct MethodFaults {
    pub(super) failures: VecDeque<Failure>,
    pub(super) delay: Duration,
    /// Answers are sent with their first byte spoiled (see `garble`).
    pub(super) garbled: bool,
}

/// A scripted failure; `remaining: None` means until cleared.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) status: Status,
    pub(super) remaining: Option<usize>,
}

impl Shared {
    /// Counts the call, waits out its delay and applies a scripted failure.
    pub(super) async fn enter(&self, method: &'static str) -> Result<(), Status> {
        *self.calls.lock().entry(method).or_default() += 1;
        let (delay, failure) = {
            let mut faults = self.faults.lock();
            match faults.get_mut(method) {
                None => (Duration::ZERO, None),
                Some(faults) => (faults.delay, take_failure(&mut faults.failures)),
            }
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match failure {
            Some(status) => Err(status),
            None => Ok(()),
        }
    }

    /// Changes the runtime state and publishes the events the change made,
    /// under the state lock so that streams see events in change order.
    pub(super) fn drive<T>(
        &self,
        change: impl FnOnce(&mut RuntimeState, &mut Vec<ContainerEventResponse>) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let mut state = self.state.lock();
        let mut events = Vec::new();
        let answer = change(&mut state, &mut events);
        if !events.is_empty() {
            let mut hub = self.events.lock();
            if !hub.unimplemented {
                for event in events {
                    hub.publish(event);
                }
            }
        }
        answer
    }

    /// Cuts every connection, then forgets the event streams: they all lived
    /// on those connections, and hyper may take a moment to drop them, during
    /// which a pushed event would be lost instead of kept in the backlog. The
    /// sockets are shut down first, so the client never sees a clean end.
    pub(super) fn cut_connections(&self) -> usize {
        let cut = self.connections.cut_all();
        self.events.lock().end_all(None);
        cut
    }

    pub(super) async fn unimplemented<T>(&self, method: &'static str) -> Result<T, Status> {
        self.enter(method).await?;
        Err(Status::unimplemented(format!(
            "unknown method {method} for service runtime.v1.RuntimeService"
        )))
    }
}

pub(super) fn take_failure(failures: &mut VecDeque<Failure>) -> Option<Status> {
    let failure = failures.front_mut()?;
    let status = failure.status.clone();
    if let Some(remaining) = &mut failure.remaining {
        *remaining = remaining.saturating_sub(1);
        if *remaining == 0 {
            failures.pop_front();
        }
    }
    Some(status)
}

pub(super) fn known_method(name: &str) -> &'static str {
    match method::canonical(name) {
        Some(m) => m,
        None => panic!(
            "fake CRI: {name:?} is not a runtime.v1.RuntimeService method; use the names in pleg_testkit::fake_cri::method"
        ),
    }
}

// --- the gRPC service ---

#[tonic::async_trait]
impl RuntimeService for Shared {
    async fn version(
        &self,
        _request: Request<cri::VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        self.enter(method::VERSION).await?;
        Ok(Response::new(self.state.lock().version.clone()))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        self.enter(method::RUN_POD_SANDBOX).await?;
        let request = request.into_inner();
        let pod_sandbox_id = self.drive(|state, events| state.run_pod_sandbox(request, events))?;
        Ok(Response::new(cri::RunPodSandboxResponse { pod_sandbox_id }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        self.enter(method::STOP_POD_SANDBOX).await?;
        let id = request.into_inner().pod_sandbox_id;
        self.drive(|state, events| state.stop_pod_sandbox(&id, events))?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        self.enter(method::REMOVE_POD_SANDBOX).await?;
        let id = request.into_inner().pod_sandbox_id;
        self.drive(|state, events| state.remove_pod_sandbox(&id, events))?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        self.enter(method::POD_SANDBOX_STATUS).await?;
        let id = request.into_inner().pod_sandbox_id;
        let status = self.state.lock().sandbox_status(&id);
        match status {
            Some(status) => Ok(Response::new(cri::PodSandboxStatusResponse {
                status: Some(status),
                ..cri::PodSandboxStatusResponse::default()
            })),
            None => Err(sandbox_not_found(&id)),
        }
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        self.enter(method::LIST_POD_SANDBOX).await?;
        let filter = request.into_inner().filter;
        let items = self.state.lock().list_sandboxes(filter.as_ref());
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        self.enter(method::CREATE_CONTAINER).await?;
        let request = request.into_inner();
        let container_id = self.drive(|state, events| state.create_container(request, events))?;
        Ok(Response::new(cri::CreateContainerResponse { container_id }))
    }

    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        self.enter(method::START_CONTAINER).await?;
        let id = request.into_inner().container_id;
        self.drive(|state, events| state.start_container(&id, events))?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        self.enter(method::STOP_CONTAINER).await?;
        let id = request.into_inner().container_id;
        self.drive(|state, events| state.stop_container(&id, events))?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        self.enter(method::REMOVE_CONTAINER).await?;
        let id = request.into_inner().container_id;
        self.drive(|state, events| {
            state.remove_container(&id, events);
            Ok(())
        })?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        self.enter(method::LIST_CONTAINERS).await?;
        let filter = request.into_inner().filter;
        let containers = self.state.lock().list_containers(filter.as_ref());
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        self.enter(method::CONTAINER_STATUS).await?;
        let id = request.into_inner().container_id;
        let status = self.state.lock().container_status(&id);
        match status {
            Some(status) => Ok(Response::new(cri::ContainerStatusResponse {
                status: Some(status),
                info: HashMap::new(),
            })),
            None => Err(container_not_found(&id)),
        }
    }

    async fn update_container_resources(
        &self,
        _request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        self.unimplemented(method::UPDATE_CONTAINER_RESOURCES).await
    }

    async fn reopen_container_log(
        &self,
        _request: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        self.unimplemented(method::REOPEN_CONTAINER_LOG).await
    }

    async fn exec_sync(
        &self,
        _request: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        self.unimplemented(method::EXEC_SYNC).await
    }

    async fn exec(
        &self,
        _request: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        self.unimplemented(method::EXEC).await
    }

    async fn attach(
        &self,
        _request: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        self.unimplemented(method::ATTACH).await
    }

    async fn port_forward(
        &self,
        _request: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        self.unimplemented(method::PORT_FORWARD).await
    }

    async fn container_stats(
        &self,
        _request: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        self.unimplemented(method::CONTAINER_STATS).await
    }

    async fn list_container_stats(
        &self,
        _request: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        self.unimplemented(method::LIST_CONTAINER_STATS).await
    }

    async fn pod_sandbox_stats(
        &self,
        _request: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        self.unimplemented(method::POD_SANDBOX_STATS).await
    }

    async fn list_pod_sandbox_stats(
        &self,
        _request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        self.unimplemented(method::LIST_POD_SANDBOX_STATS).await
    }

    async fn update_runtime_config(
        &self,
        _request: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        self.unimplemented(method::UPDATE_RUNTIME_CONFIG).await
    }

    async fn status(
        &self,
        _request: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        self.enter(method::STATUS).await?;
        let ready = |kind: &str| cri::RuntimeCondition {
            r#type: kind.to_owned(),
            status: true,
            reason: String::new(),
            message: String::new(),
        };
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![ready("RuntimeReady"), ready("NetworkReady")],
            }),
            ..cri::StatusResponse::default()
        }))
    }

    async fn checkpoint_container(
        &self,
        _request: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        self.unimplemented(method::CHECKPOINT_CONTAINER).await
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        _request: Request<cri::GetEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.enter(method::GET_CONTAINER_EVENTS).await?;
        subscribe(&self.events).map(Response::new)
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        self.unimplemented(method::LIST_METRIC_DESCRIPTORS).await
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        self.unimplemented(method::LIST_POD_SANDBOX_METRICS).await
    }

    async fn runtime_config(
        &self,
        _request: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        self.unimplemented(method::RUNTIME_CONFIG).await
    }
}
