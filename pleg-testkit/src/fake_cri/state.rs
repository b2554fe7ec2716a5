//! The tiny runtime the fake serves: sandboxes and containers in insertion
//! order, status detail, IPs and a version, and the changes the driver RPCs
//! make to them, with the events containerd would send.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_cri::v1 as cri;
use k8s_cri::v1::{
    Container, ContainerEventResponse, ContainerEventType, ContainerState, ContainerStatus,
    PodSandbox, PodSandboxState, PodSandboxStatus, VersionResponse,
};
use tonic::Status;

/// Exit code containerd reports for a container killed with SIGKILL.
const KILLED_EXIT_CODE: i32 = 137;

// --- the tiny runtime ---

/// What the fake runtime holds.
#[derive(Debug)]
pub(super) struct RuntimeState {
    pub(super) version: VersionResponse,
    pub(super) sandboxes: Vec<PodSandbox>,
    pub(super) containers: Vec<Container>,
    /// Status detail by container id; derived from the container when absent.
    pub(super) statuses: HashMap<String, ContainerStatus>,
    pub(super) sandbox_ips: HashMap<String, Vec<String>>,
    pub(super) last_timestamp: i64,
    /// Makes the ids; seeded at random, so that two servers' ids differ.
    pub(super) ids: fastrand::Rng,
    pub(super) ips_made: u32,
}

impl Default for RuntimeState {
    fn default() -> Self {
        RuntimeState {
            version: VersionResponse {
                version: "0.1.0".to_owned(),
                runtime_name: "fake-cri".to_owned(),
                runtime_version: "0.1.0".to_owned(),
                runtime_api_version: "v1".to_owned(),
            },
            sandboxes: Vec::new(),
            containers: Vec::new(),
            statuses: HashMap::new(),
            sandbox_ips: HashMap::new(),
            last_timestamp: 0,
            ids: fastrand::Rng::new(),
            ips_made: 0,
        }
    }
}

impl RuntimeState {
    /// Wall-clock nanoseconds, strictly increasing across calls, so that
    /// events never share a timestamp.
    pub(super) fn now(&mut self) -> i64 {
        let now = wall_clock_ns().max(self.last_timestamp.saturating_add(1));
        self.last_timestamp = now;
        now
    }

    /// A fresh 64-hex-digit id, like containerd's.
    pub(super) fn new_id(&mut self) -> String {
        let mut id = String::with_capacity(64);
        for _ in 0..4 {
            id.push_str(&format!("{:016x}", self.ids.u64(..)));
        }
        id
    }

    pub(super) fn next_pod_ip(&mut self) -> String {
        // 10.88.0.2 onwards, like containerd's default CNI network.
        let n = self.ips_made % (256 * 254) + 2;
        self.ips_made += 1;
        format!("10.88.{}.{}", n / 256, n % 256)
    }

    pub(super) fn sandbox(&self, id: &str) -> Option<&PodSandbox> {
        self.sandboxes.iter().find(|s| s.id == id)
    }

    pub(super) fn container(&self, id: &str) -> Option<&Container> {
        self.containers.iter().find(|c| c.id == id)
    }

    pub(super) fn put_sandbox(&mut self, sandbox: PodSandbox) {
        match self.sandboxes.iter_mut().find(|s| s.id == sandbox.id) {
            Some(slot) => *slot = sandbox,
            None => self.sandboxes.push(sandbox),
        }
    }

    pub(super) fn put_container(&mut self, container: Container) {
        self.statuses.remove(&container.id);
        match self.containers.iter_mut().find(|c| c.id == container.id) {
            Some(slot) => *slot = container,
            None => self.containers.push(container),
        }
    }

    pub(super) fn sandbox_status(&self, id: &str) -> Option<PodSandboxStatus> {
        let sandbox = self.sandbox(id)?;
        let mut ips = self.sandbox_ips.get(id).into_iter().flatten();
        Some(PodSandboxStatus {
            id: sandbox.id.clone(),
            metadata: sandbox.metadata.clone(),
            state: sandbox.state,
            created_at: sandbox.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: ips.next().cloned().unwrap_or_default(),
                additional_ips: ips.map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(cri::NamespaceOption::default()),
                }),
            }),
            labels: sandbox.labels.clone(),
            annotations: sandbox.annotations.clone(),
            runtime_handler: sandbox.runtime_handler.clone(),
        })
    }

    pub(super) fn container_status(&self, id: &str) -> Option<ContainerStatus> {
        match self.statuses.get(id) {
            Some(detail) => Some(detail.clone()),
            None => self.container(id).map(derived_status),
        }
    }

    /// The statuses of every container in the sandbox, in listing order.
    pub(super) fn statuses_in(&self, sandbox_id: &str) -> Vec<ContainerStatus> {
        self.containers
            .iter()
            .filter(|c| c.pod_sandbox_id == sandbox_id)
            .filter_map(|c| self.container_status(&c.id))
            .collect()
    }

    /// The status detail of a stored container, derived first if need be.
    pub(super) fn detail_mut(&mut self, id: &str) -> Option<&mut ContainerStatus> {
        if !self.statuses.contains_key(id) {
            let derived = derived_status(self.container(id)?);
            self.statuses.insert(id.to_owned(), derived);
        }
        self.statuses.get_mut(id)
    }

    /// The event containerd sends: the sandbox's status and the statuses of
    /// all its containers, as they are now.
    pub(super) fn event(
        &mut self,
        container_id: &str,
        sandbox_id: &str,
        kind: ContainerEventType,
    ) -> ContainerEventResponse {
        ContainerEventResponse {
            container_id: container_id.to_owned(),
            container_event_type: kind as i32,
            created_at: self.now(),
            pod_sandbox_status: self.sandbox_status(sandbox_id),
            containers_statuses: self.statuses_in(sandbox_id),
        }
    }

    pub(super) fn list_sandboxes(&self, filter: Option<&cri::PodSandboxFilter>) -> Vec<PodSandbox> {
        self.sandboxes
            .iter()
            .filter(|s| {
                filter.is_none_or(|f| {
                    (f.id.is_empty() || s.id == f.id)
                        && f.state.as_ref().is_none_or(|v| v.state == s.state)
                        && labels_match(&s.labels, &f.label_selector)
                })
            })
            .cloned()
            .collect()
    }

    pub(super) fn list_containers(&self, filter: Option<&cri::ContainerFilter>) -> Vec<Container> {
        self.containers
            .iter()
            .filter(|c| {
                filter.is_none_or(|f| {
                    (f.id.is_empty() || c.id == f.id)
                        && (f.pod_sandbox_id.is_empty() || c.pod_sandbox_id == f.pod_sandbox_id)
                        && f.state.as_ref().is_none_or(|v| v.state == c.state)
                        && labels_match(&c.labels, &f.label_selector)
                })
            })
            .cloned()
            .collect()
    }

    // --- driver RPCs ---

    pub(super) fn run_pod_sandbox(
        &mut self,
        request: cri::RunPodSandboxRequest,
        events: &mut Vec<ContainerEventResponse>,
    ) -> Result<String, Status> {
        let config = request.config.unwrap_or_default();
        let Some(metadata) = config.metadata else {
            return Err(Status::invalid_argument(
                "sandbox config must include metadata",
            ));
        };
        let host_network = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .is_some_and(|n| n.network == cri::NamespaceMode::Node as i32);
        let id = self.new_id();
        let created_at = self.now();
        self.sandboxes.push(PodSandbox {
            id: id.clone(),
            metadata: Some(metadata),
            state: PodSandboxState::SandboxReady as i32,
            created_at,
            labels: config.labels,
            annotations: config.annotations,
            runtime_handler: request.runtime_handler,
        });
        if !host_network {
            let ip = self.next_pod_ip();
            self.sandbox_ips.insert(id.clone(), vec![ip]);
        }
        events.push(self.event(&id, &id, ContainerEventType::ContainerCreatedEvent));
        events.push(self.event(&id, &id, ContainerEventType::ContainerStartedEvent));
        Ok(id)
    }

    pub(super) fn stop_pod_sandbox(
        &mut self,
        id: &str,
        events: &mut Vec<ContainerEventResponse>,
    ) -> Result<(), Status> {
        if self.sandbox(id).is_none() {
            return Err(sandbox_not_found(id));
        }
        let running: Vec<String> = self
            .containers
            .iter()
            .filter(|c| c.pod_sandbox_id == id && is_running(c.state))
            .map(|c| c.id.clone())
            .collect();
        for container_id in running {
            self.kill(&container_id, KILLED_EXIT_CODE, "Error", events);
        }
        let ready = PodSandboxState::SandboxReady as i32;
        if let Some(sandbox) = self.sandboxes.iter_mut().find(|s| s.id == id)
            && sandbox.state == ready
        {
            sandbox.state = PodSandboxState::SandboxNotready as i32;
            self.sandbox_ips.remove(id);
            events.push(self.event(id, id, ContainerEventType::ContainerStoppedEvent));
        }
        Ok(())
    }

    pub(super) fn remove_pod_sandbox(
        &mut self,
        id: &str,
        events: &mut Vec<ContainerEventResponse>,
    ) -> Result<(), Status> {
        if self.sandbox(id).is_none() {
            return Ok(());
        }
        self.stop_pod_sandbox(id, events)?;
        let members: Vec<String> = self
            .containers
            .iter()
            .filter(|c| c.pod_sandbox_id == id)
            .map(|c| c.id.clone())
            .collect();
        for container_id in members {
            self.remove_container(&container_id, events);
        }
        self.sandboxes.retain(|s| s.id != id);
        self.sandbox_ips.remove(id);
        events.push(self.event(id, id, ContainerEventType::ContainerDeletedEvent));
        Ok(())
    }

    pub(super) fn create_container(
        &mut self,
        request: cri::CreateContainerRequest,
        events: &mut Vec<ContainerEventResponse>,
    ) -> Result<String, Status> {
        let sandbox_id = request.pod_sandbox_id;
        let Some(sandbox) = self.sandbox(&sandbox_id) else {
            return Err(sandbox_not_found(&sandbox_id));
        };
        if sandbox.state != PodSandboxState::SandboxReady as i32 {
            return Err(Status::failed_precondition(format!(
                "sandbox container {sandbox_id:?} is not running"
            )));
        }
        let config = request.config.unwrap_or_default();
        let Some(metadata) = config.metadata else {
            return Err(Status::invalid_argument(
                "container config must include metadata",
            ));
        };
        let id = self.new_id();
        let created_at = self.now();
        let container = Container {
            id: id.clone(),
            pod_sandbox_id: sandbox_id.clone(),
            metadata: Some(metadata),
            image_ref: config
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default(),
            image: config.image,
            state: ContainerState::ContainerCreated as i32,
            created_at,
            labels: config.labels,
            annotations: config.annotations,
            image_id: String::new(),
        };
        let mut detail = derived_status(&container);
        detail.log_path = config.log_path;
        self.containers.push(container);
        self.statuses.insert(id.clone(), detail);
        events.push(self.event(&id, &sandbox_id, ContainerEventType::ContainerCreatedEvent));
        Ok(id)
    }

    pub(super) fn start_container(
        &mut self,
        id: &str,
        events: &mut Vec<ContainerEventResponse>,
    ) -> Result<(), Status> {
        let Some(container) = self.container(id) else {
            return Err(container_not_found(id));
        };
        if container.state != ContainerState::ContainerCreated as i32 {
            return Err(Status::failed_precondition(format!(
                "container {id:?} is in {} state",
                container_state_name(container.state)
            )));
        }
        let sandbox_id = container.pod_sandbox_id.clone();
        match self.sandbox(&sandbox_id) {
            None => return Err(sandbox_not_found(&sandbox_id)),
            Some(s) if s.state != PodSandboxState::SandboxReady as i32 => {
                return Err(Status::failed_precondition(format!(
                    "sandbox container {sandbox_id:?} is not running"
                )));
            }
            Some(_) => {}
        }
        let now = self.now();
        let running = ContainerState::ContainerRunning as i32;
        if let Some(c) = self.containers.iter_mut().find(|c| c.id == id) {
            c.state = running;
        }
        if let Some(detail) = self.detail_mut(id) {
            detail.state = running;
            detail.started_at = now;
        }
        events.push(self.event(id, &sandbox_id, ContainerEventType::ContainerStartedEvent));
        Ok(())
    }

    pub(super) fn stop_container(
        &mut self,
        id: &str,
        events: &mut Vec<ContainerEventResponse>,
    ) -> Result<(), Status> {
        let Some(container) = self.container(id) else {
            return Err(container_not_found(id));
        };
        if is_running(container.state) {
            self.kill(id, KILLED_EXIT_CODE, "Error", events);
        }
        Ok(())
    }

    pub(super) fn remove_container(&mut self, id: &str, events: &mut Vec<ContainerEventResponse>) {
        let Some(container) = self.container(id) else {
            return;
        };
        let sandbox_id = container.pod_sandbox_id.clone();
        if is_running(container.state) {
            self.kill(id, KILLED_EXIT_CODE, "Error", events);
        }
        self.containers.retain(|c| c.id != id);
        self.statuses.remove(id);
        events.push(self.event(id, &sandbox_id, ContainerEventType::ContainerDeletedEvent));
    }

    /// Ends a container's process: EXITED now with this code and reason, and
    /// the `CONTAINER_STOPPED` event.
    pub(super) fn kill(
        &mut self,
        id: &str,
        exit_code: i32,
        reason: &str,
        events: &mut Vec<ContainerEventResponse>,
    ) {
        let Some(container) = self.container(id) else {
            return;
        };
        let sandbox_id = container.pod_sandbox_id.clone();
        let now = self.now();
        let exited = ContainerState::ContainerExited as i32;
        if let Some(c) = self.containers.iter_mut().find(|c| c.id == id) {
            c.state = exited;
        }
        if let Some(detail) = self.detail_mut(id) {
            detail.state = exited;
            detail.finished_at = now;
            detail.exit_code = exit_code;
            detail.reason = reason.to_owned();
        }
        events.push(self.event(id, &sandbox_id, ContainerEventType::ContainerStoppedEvent));
    }
}

/// The status a listed container implies when no detail was given.
pub(super) fn derived_status(c: &Container) -> ContainerStatus {
    let exited = c.state == ContainerState::ContainerExited as i32;
    let started = exited || c.state == ContainerState::ContainerRunning as i32;
    ContainerStatus {
        id: c.id.clone(),
        metadata: c.metadata.clone(),
        state: c.state,
        created_at: c.created_at,
        started_at: if started { c.created_at } else { 0 },
        finished_at: if exited { c.created_at } else { 0 },
        exit_code: 0,
        image: c.image.clone(),
        image_ref: c.image_ref.clone(),
        reason: if exited {
            "Completed".to_owned()
        } else {
            String::new()
        },
        labels: c.labels.clone(),
        annotations: c.annotations.clone(),
        image_id: c.image_id.clone(),
        ..ContainerStatus::default()
    }
}

/// Running, or unknown (which containerd also force-stops).
pub(super) fn is_running(state: i32) -> bool {
    state == ContainerState::ContainerRunning as i32
        || state == ContainerState::ContainerUnknown as i32
}

pub(super) fn container_state_name(state: i32) -> &'static str {
    ContainerState::try_from(state).map_or("UNKNOWN", |s| s.as_str_name())
}

pub(super) fn labels_match(
    labels: &HashMap<String, String>,
    selector: &HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub(super) fn sandbox_not_found(id: &str) -> Status {
    Status::not_found(format!(
        "an error occurred when try to find sandbox {id:?}: not found"
    ))
}

pub(super) fn container_not_found(id: &str) -> Status {
    Status::not_found(format!(
        "an error occurred when try to find container {id:?}: not found"
    ))
}

pub(super) fn now_ns_of(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

pub(super) fn wall_clock_ns() -> i64 {
    now_ns_of(SystemTime::now())
}
