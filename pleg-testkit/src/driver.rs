//! A crictl-style workload driver: the calls crictl makes (`runp`, `create`,
//! `start`, `stop`, `rm`, `stopp`, `rmp`, `inspect`) over a CRI client of its
//! own, so that tests, benchmarks and the demo can make a runtime do things
//! while pleg watches it.
//!
//! It is test tooling: pods always use the node's network namespace (the
//! project-local containerd has no CNI), and nothing here is needed to watch
//! a runtime. pleg itself keeps only pod teardown
//! ([`CriRuntime::stop_pod`](pleg::runtime::cri::CriRuntime::stop_pod) and
//! [`remove_pod`](pleg::runtime::cri::CriRuntime::remove_pod)).
//!
//! The endpoint is parsed like pleg's ([`RuntimeEndpoint`]); failures are
//! pleg's [`runtime::Error`](Error)s, naming the call and the endpoint. Calls
//! are counted in [`Driver::stats`] by method and outcome, as the runtime
//! adapter counts its own.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use pleg_testkit::driver::{ContainerSpec, Driver, PodSpec};
//!
//! let driver = Driver::new("unix:///run/containerd/containerd.sock")?;
//! let pod = PodSpec::new("web", "default", "uid-web").with_label("app", "web");
//! let sandbox = driver.run_pod(&pod).await?;
//! let app = ContainerSpec::new("app", "docker.io/library/busybox:latest", ["/bin/sleep", "60"]);
//! let id = driver.create_container(&sandbox, &pod, &app).await?;
//! driver.start_container(&id).await?;
//! driver.stop_pod(&sandbox).await?;
//! driver.remove_pod(&sandbox).await?;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use pleg::model::{Container, ContainerState};
use pleg::runtime::cri::{
    ConnectError, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_REQUEST_TIMEOUT, RuntimeEndpoint,
    container_from_status, describe_status,
};
use pleg::runtime::{CriMethod, Error, Result, RpcOutcome, RuntimeStats};
use tonic::transport::{Channel, Endpoint};

/// A CRI client that drives a runtime the way crictl does.
#[derive(Debug)]
pub struct Driver {
    endpoint: RuntimeEndpoint,
    client: RuntimeServiceClient<Channel>,
    request_timeout: Duration,
    stats: RuntimeStats,
}

impl Driver {
    /// A driver for `endpoint` (`unix:///path` or a bare path); it connects
    /// on first use and again after a dropped connection. Only a malformed
    /// endpoint fails here. Must be called inside a tokio runtime.
    pub fn new(endpoint: &str) -> Result<Driver, ConnectError> {
        let parsed = RuntimeEndpoint::parse(endpoint)?;
        let channel = Endpoint::from_shared(parsed.to_string())
            .map_err(|e| ConnectError::InvalidEndpoint {
                endpoint: endpoint.to_string(),
                reason: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(10))
            .connect_lazy();
        let client = RuntimeServiceClient::new(channel)
            .max_decoding_message_size(DEFAULT_MAX_MESSAGE_SIZE)
            .max_encoding_message_size(DEFAULT_MAX_MESSAGE_SIZE);
        Ok(Driver {
            endpoint: parsed,
            client,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            stats: RuntimeStats::default(),
        })
    }

    /// Bounds every call by `timeout` instead of the kubelet's 2 minutes (a
    /// stop adds its grace period).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The endpoint, as `unix:///path`.
    pub fn endpoint(&self) -> &RuntimeEndpoint {
        &self.endpoint
    }

    /// The driver's calls so far, by method and outcome.
    pub fn stats(&self) -> &RuntimeStats {
        &self.stats
    }

    /// Runs a pod sandbox (crictl `runp`); returns its ID.
    pub async fn run_pod(&self, pod: &PodSpec) -> Result<String> {
        let request = cri::RunPodSandboxRequest {
            config: Some(pod.sandbox_config()),
            runtime_handler: String::new(),
        };
        Ok(self
            .call(
                CriMethod::RunPodSandbox,
                self.request_timeout,
                |mut c| async move { c.run_pod_sandbox(request).await },
            )
            .await?
            .pod_sandbox_id)
    }

    /// Creates a container in a sandbox (crictl `create`); returns its ID.
    pub async fn create_container(
        &self,
        sandbox_id: &str,
        pod: &PodSpec,
        container: &ContainerSpec,
    ) -> Result<String> {
        let request = cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.to_string(),
            config: Some(container.container_config()),
            sandbox_config: Some(pod.sandbox_config()),
        };
        Ok(self
            .call(
                CriMethod::CreateContainer,
                self.request_timeout,
                |mut c| async move { c.create_container(request).await },
            )
            .await?
            .container_id)
    }

    /// Starts a created container (crictl `start`).
    pub async fn start_container(&self, container_id: &str) -> Result<()> {
        let request = cri::StartContainerRequest {
            container_id: container_id.to_string(),
        };
        self.call(
            CriMethod::StartContainer,
            self.request_timeout,
            |mut c| async move { c.start_container(request).await },
        )
        .await
        .map(drop)
    }

    /// Stops a container (crictl `stop`): SIGTERM, then SIGKILL after `grace`.
    /// The request timeout is extended by `grace`, as the kubelet does.
    pub async fn stop_container(&self, container_id: &str, grace: Duration) -> Result<()> {
        let request = cri::StopContainerRequest {
            container_id: container_id.to_string(),
            timeout: i64::try_from(grace.as_secs()).unwrap_or(i64::MAX),
        };
        self.call(
            CriMethod::StopContainer,
            self.request_timeout.saturating_add(grace),
            |mut c| async move { c.stop_container(request).await },
        )
        .await
        .map(drop)
    }

    /// Removes a container (crictl `rm`).
    pub async fn remove_container(&self, container_id: &str) -> Result<()> {
        let request = cri::RemoveContainerRequest {
            container_id: container_id.to_string(),
        };
        self.call(
            CriMethod::RemoveContainer,
            self.request_timeout,
            |mut c| async move { c.remove_container(request).await },
        )
        .await
        .map(drop)
    }

    /// Stops a pod sandbox and its containers (crictl `stopp`).
    pub async fn stop_pod(&self, sandbox_id: &str) -> Result<()> {
        let request = cri::StopPodSandboxRequest {
            pod_sandbox_id: sandbox_id.to_string(),
        };
        self.call(
            CriMethod::StopPodSandbox,
            self.request_timeout,
            |mut c| async move { c.stop_pod_sandbox(request).await },
        )
        .await
        .map(drop)
    }

    /// Removes a pod sandbox and its containers (crictl `rmp`).
    pub async fn remove_pod(&self, sandbox_id: &str) -> Result<()> {
        let request = cri::RemovePodSandboxRequest {
            pod_sandbox_id: sandbox_id.to_string(),
        };
        self.call(
            CriMethod::RemovePodSandbox,
            self.request_timeout,
            |mut c| async move { c.remove_pod_sandbox(request).await },
        )
        .await
        .map(drop)
    }

    /// The status of one container (crictl `inspect`), in pleg's model, as
    /// pleg's cache would hold it: state, exit code and reason, times.
    pub async fn container_status(&self, container_id: &str) -> Result<Container> {
        let request = cri::ContainerStatusRequest {
            container_id: container_id.to_string(),
            verbose: false,
        };
        let answer = self
            .call(
                CriMethod::ContainerStatus,
                self.request_timeout,
                |mut c| async move { c.container_status(request).await },
            )
            .await?;
        let listed = Container::new(container_id, "", ContainerState::Unknown);
        match answer.status {
            Some(s) => Ok(container_from_status(&self.stats, &s, &listed)),
            None => Err(Error::failed(
                CriMethod::ContainerStatus,
                format!("runtime answered no status for container {container_id}"),
            )),
        }
    }

    /// Runs one RPC with a deadline, counting it by method and outcome.
    async fn call<T, F, Fut>(&self, method: CriMethod, timeout: Duration, call: F) -> Result<T>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(timeout, call(self.client.clone())).await {
            Ok(Ok(response)) => {
                self.stats
                    .count_request(method, RpcOutcome::Code(tonic::Code::Ok));
                Ok(response.into_inner())
            }
            Ok(Err(status)) => {
                self.stats
                    .count_request(method, RpcOutcome::Code(status.code()));
                let message = if status.code() == tonic::Code::Unavailable
                    && !self.endpoint.path().exists()
                {
                    format!("runtime endpoint {}: no such socket", self.endpoint)
                } else {
                    format!(
                        "runtime endpoint {}: {}",
                        self.endpoint,
                        describe_status(&status)
                    )
                };
                let code = status.code();
                Err(Error::Failed {
                    call: method.into(),
                    code,
                    message,
                    source: Some(std::sync::Arc::new(status)),
                })
            }
            Err(_) => {
                self.stats.count_request(method, RpcOutcome::Timeout);
                Err(Error::Timeout {
                    call: method.into(),
                    after: timeout,
                })
            }
        }
    }
}

/// A pod for [`Driver::run_pod`]. It always uses the node's network
/// namespace (see [`host_network`]) and a PID namespace per container, as the
/// kubelet does.
#[derive(Clone, Debug, Default)]
pub struct PodSpec {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod UID.
    pub uid: String,
    /// Sandbox attempt.
    pub attempt: u32,
    /// Sandbox labels (they become the pod's labels in pleg).
    pub labels: BTreeMap<String, String>,
    /// Host directory the runtime writes its containers' logs to (their
    /// [`ContainerSpec::log_path`] is relative to it); none by default, and
    /// then their output is discarded.
    pub log_directory: Option<PathBuf>,
}

impl PodSpec {
    /// A pod with this identity.
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        uid: impl Into<String>,
    ) -> Self {
        PodSpec {
            name: name.into(),
            namespace: namespace.into(),
            uid: uid.into(),
            ..PodSpec::default()
        }
    }

    /// Adds a label.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Sets the host directory of the containers' logs.
    pub fn with_log_directory(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log_directory = Some(dir.into());
        self
    }

    /// The CRI sandbox configuration this spec stands for.
    pub fn sandbox_config(&self) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: self.attempt,
            }),
            // No hostname: a pod on the node's network shares its UTS
            // namespace, and runc refuses to set one there.
            labels: self.labels.clone().into_iter().collect(),
            log_directory: self
                .log_directory
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// A container for [`Driver::create_container`].
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    /// Container name.
    pub name: String,
    /// Image reference; the image must already be on the node.
    pub image: String,
    /// Entrypoint override.
    pub command: Vec<String>,
    /// Arguments.
    pub args: Vec<String>,
    /// Attempt (restart count).
    pub attempt: u32,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Container labels.
    pub labels: BTreeMap<String, String>,
    /// Host paths bind-mounted into the container, as (host, container).
    pub mounts: Vec<(PathBuf, PathBuf)>,
    /// Mount the image's root filesystem read-only (Kubernetes'
    /// `readOnlyRootFilesystem`).
    pub readonly_rootfs: bool,
    /// Keep the processes from gaining privileges, `no_new_privs` (what
    /// Kubernetes' `allowPrivilegeEscalation: false` asks for).
    pub no_new_privileges: bool,
    /// Capabilities to drop (Kubernetes' `capabilities.drop`, such as
    /// `ALL`); none by default, leaving the runtime's default set.
    pub drop_capabilities: Vec<String>,
    /// The log file, relative to the pod's [`PodSpec::log_directory`].
    pub log_path: Option<PathBuf>,
}

impl ContainerSpec {
    /// A container running `command` in `image`.
    pub fn new(
        name: impl Into<String>,
        image: impl Into<String>,
        command: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        ContainerSpec {
            name: name.into(),
            image: image.into(),
            command: command.into_iter().map(Into::into).collect(),
            ..ContainerSpec::default()
        }
    }

    /// Sets the attempt.
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Bind-mounts a host path into the container.
    pub fn with_mount(mut self, host: impl Into<PathBuf>, container: impl Into<PathBuf>) -> Self {
        self.mounts.push((host.into(), container.into()));
        self
    }

    /// Sets the arguments (to the image's entrypoint when `command` is
    /// empty, as with Kubernetes' `args`).
    pub fn with_args(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Adds an environment variable.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Mounts the root filesystem read-only, or not.
    pub fn with_readonly_rootfs(mut self, readonly: bool) -> Self {
        self.readonly_rootfs = readonly;
        self
    }

    /// Sets `no_new_privs`, or not.
    pub fn with_no_new_privileges(mut self, no_new_privileges: bool) -> Self {
        self.no_new_privileges = no_new_privileges;
        self
    }

    /// Drops these capabilities (`ALL` for every one).
    pub fn with_drop_capabilities(
        mut self,
        capabilities: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.drop_capabilities = capabilities.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the log file, relative to the pod's log directory.
    pub fn with_log_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.log_path = Some(path.into());
        self
    }

    /// The CRI container configuration this spec stands for.
    pub fn container_config(&self) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: self.name.clone(),
                attempt: self.attempt,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: self.command.clone(),
            args: self.args.clone(),
            envs: self
                .env
                .iter()
                .map(|(key, value)| cri::KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            labels: self.labels.clone().into_iter().collect(),
            mounts: self
                .mounts
                .iter()
                .map(|(host, container)| cri::Mount {
                    host_path: host.display().to_string(),
                    container_path: container.display().to_string(),
                    ..Default::default()
                })
                .collect(),
            log_path: self
                .log_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(host_network()),
                    readonly_rootfs: self.readonly_rootfs,
                    no_new_privs: self.no_new_privileges,
                    capabilities: (!self.drop_capabilities.is_empty()).then(|| cri::Capability {
                        drop_capabilities: self.drop_capabilities.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// The namespaces of every pod and container the driver makes: the node's
/// network (there is no CNI on a test node), a PID namespace per container
/// and an IPC namespace per pod, as the kubelet does.
pub fn host_network() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_cri::FakeCriServer;

    #[tokio::test]
    async fn the_driver_walks_a_pod_through_its_life_on_the_fake() {
        let server = FakeCriServer::start().await.expect("fake CRI server");
        let driver = Driver::new(&server.endpoint()).expect("a valid endpoint");
        let pod = PodSpec::new("web", "default", "uid-web").with_label("app", "web");
        let sandbox = driver.run_pod(&pod).await.expect("RunPodSandbox");
        let listed = server.sandboxes();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, sandbox);
        assert_eq!(listed[0].labels.get("app").map(String::as_str), Some("web"));

        let app = ContainerSpec::new("app", "busybox", ["/bin/sleep", "60"]).with_attempt(2);
        let id = driver
            .create_container(&sandbox, &pod, &app)
            .await
            .expect("CreateContainer");
        driver.start_container(&id).await.expect("StartContainer");
        let running = driver.container_status(&id).await.expect("ContainerStatus");
        assert_eq!(
            (running.name.as_str(), running.attempt, running.state),
            ("app", 2, ContainerState::Running)
        );

        driver
            .stop_container(&id, Duration::ZERO)
            .await
            .expect("StopContainer");
        let stopped = driver.container_status(&id).await.expect("ContainerStatus");
        assert_eq!(stopped.state, ContainerState::Exited);
        assert_eq!(stopped.exit_code, Some(137));
        driver.remove_container(&id).await.expect("RemoveContainer");
        assert!(server.containers().is_empty());

        driver.stop_pod(&sandbox).await.expect("StopPodSandbox");
        driver.remove_pod(&sandbox).await.expect("RemovePodSandbox");
        assert!(server.sandboxes().is_empty());
        assert_eq!(driver.stats().calls_of(CriMethod::ContainerStatus), 2);
        assert_eq!(server.calls("RunPodSandbox"), 1);
    }

    #[tokio::test]
    async fn failures_name_the_call_and_the_endpoint() {
        let server = FakeCriServer::start().await.expect("fake CRI server");
        let driver = Driver::new(&server.endpoint()).expect("a valid endpoint");
        let err = driver
            .start_container("nope")
            .await
            .expect_err("unknown container");
        let text = err.to_string();
        assert!(
            text.contains("StartContainer")
                && text.contains(&server.endpoint())
                && text.contains("NotFound"),
            "{text}"
        );
        assert!(Driver::new("tcp://127.0.0.1:1").is_err());
    }
}
