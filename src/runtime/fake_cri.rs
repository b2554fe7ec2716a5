//! A fake CRI runtime service on a unix socket, for wire-level fault tests.
//!
//! [`FakeCriServer`] serves `runtime.v1.RuntimeService` with tonic on a real
//! unix socket, so that pleg's real CRI client (tonic over `unix://path`) can
//! be pointed at it. Like [`fake`](super::fake) it is scripted: the test sets
//! the state it lists, makes calls fail or slow, cuts connections, stops and
//! restarts serving, and pushes container events. Every answer is computed in
//! process; nothing here touches a real runtime.
//!
//! # State
//! A tiny runtime: sandboxes and containers in insertion order, optional
//! status detail per container, IPs per sandbox and a version. The `put_*` and
//! `remove_*` methods change it as given and push no events. The driver RPCs
//! (`RunPodSandbox`, `StopPodSandbox`, `RemovePodSandbox`, `CreateContainer`,
//! `StartContainer`, `StopContainer`, `RemoveContainer`) and
//! [`FakeCriServer::exit_container`] change it the way containerd 1.7 does and
//! push the events containerd would:
//! - `RunPodSandbox`: a READY sandbox with a 64-hex id and an IP from
//!   `10.88.0.0/16` (none for host-network pods), then `CONTAINER_CREATED` and
//!   `CONTAINER_STARTED` events with the sandbox id as the container id.
//! - `CreateContainer` (sandbox must be READY): a CREATED container, event
//!   `CONTAINER_CREATED`. `StartContainer` (container must be CREATED, sandbox
//!   READY): RUNNING, `CONTAINER_STARTED`.
//! - `StopContainer`: a running container is killed: EXITED, exit code 137,
//!   reason `Error` (containerd's answer for a SIGKILLed process; a clean exit
//!   is [`FakeCriServer::exit_container`] with code 0, reason `Completed`),
//!   event `CONTAINER_STOPPED`. Stopping a stopped or never started container
//!   is a no-op; an unknown id is `NotFound`.
//! - `StopPodSandbox`: kills its running containers (one `CONTAINER_STOPPED`
//!   each), then the sandbox turns NOTREADY and loses its IPs (event
//!   `CONTAINER_STOPPED` for the sandbox). Unknown id: `NotFound`.
//! - `RemoveContainer`: a running container is force-stopped first (as
//!   containerd ≥ 1.5 does; containerd 1.0–1.4 refused with "container is
//!   still running"), then removed: `CONTAINER_DELETED`, whose
//!   `containers_statuses` no longer list it. Unknown id: success (idempotent).
//! - `RemovePodSandbox`: stops the sandbox if READY, removes its containers,
//!   then the sandbox: `CONTAINER_DELETED` with no `pod_sandbox_status` (the
//!   sandbox is gone by then, as in containerd 1.7). Unknown id: success.
//!
//! Every event carries `created_at` (wall clock, nanoseconds, strictly
//! increasing per server), the sandbox's status and the statuses of all
//! containers in the sandbox, as containerd's `generateAndSendContainerEvent`
//! fills them. Unlike containerd, sandbox and container names are not
//! reserved, so a create with a duplicate name succeeds.
//!
//! `PodSandboxStatus` and `ContainerStatus` of an unknown id answer
//! `NotFound`, like containerd. `Status` reports `RuntimeReady` and
//! `NetworkReady`. The remaining RPCs answer `Unimplemented`.
//!
//! # Faults
//! Every call is counted under its proto method name (see [`method`]) before
//! anything else, then waits out the method's delay, then fails if a failure
//! is scripted, then answers from the state as it is at that moment.
//!
//! # Time
//! Delays sleep on tokio time, so they compose with
//! `#[tokio::test(start_paused = true)]`: an hour's delay passes at once.
//! Timestamps (`created_at`, start and finish times, event times) are wall
//! clock nanoseconds, as a runtime reports them.
//!
//! # Connections
//! tonic serves each accepted connection in a task of its own, which outlives
//! the serving future, so aborting that future closes nothing. The accept
//! loop therefore keeps a duplicate of every accepted socket's file
//! descriptor; [`FakeCriServer::drop_connections`] calls `shutdown(2)` on all
//! of them and forgets every event stream (they all lived on those
//! connections). From that moment the client reads end-of-file and its writes
//! fail with a broken pipe, whatever hyper does; the server's pending reads
//! wake too, so hyper ends the connection task and drops the socket, whose
//! wrapper then deregisters. A call in flight fails (tonic reports `Unknown`
//! "transport error … broken pipe", or `Cancelled` "connection closed" for a
//! call sent before the client noticed), an open event stream ends with such
//! an error, and the channel connects again on a following call.
//! [`FakeCriServer::pause`] also aborts the accept loop (closing the
//! listener) and removes the socket file; [`FakeCriServer::resume`] binds the
//! path again.
//!
//! # Events
//! `GetContainerEvents` streams every event pushed after it opened to every
//! open stream. While no stream is open, events wait in a backlog (up to
//! [`EVENT_BACKLOG`] events; later ones are dropped and counted, as containerd
//! 1.7 drops events once its 1000-slot channel is full) that the next stream
//! receives first. Real containerd 1.7 shares one channel among all streams,
//! so with two streams each event reaches only one of them; this fake sends it
//! to all.
//!
//! It never panics on a request: missing metadata, empty ids and unknown enum
//! values are stored or answered as they come.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::Shutdown;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_core::Stream;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use k8s_cri::v1::{
    Container, ContainerEventResponse, ContainerEventType, ContainerState, ContainerStatus,
    PodSandbox, PodSandboxState, PodSandboxStatus, VersionResponse,
};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::server::{Connected, UdsConnectInfo};
use tonic::{Request, Response, Status};

/// Events kept for the next stream while none is open; more are dropped.
pub const EVENT_BACKLOG: usize = 1000;

/// Exit code containerd reports for a container killed with SIGKILL.
const KILLED_EXIT_CODE: i32 = 137;

/// Labels the kubelet puts on sandboxes and containers.
const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";

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

/// A fake CRI runtime serving on a unix socket. Cheap to script from the test
/// while clients talk to it; dropping it stops serving, closes every
/// connection and removes the socket (and the directory [`start`] made).
///
/// [`start`]: FakeCriServer::start
#[derive(Debug)]
pub struct FakeCriServer {
    shared: Arc<Shared>,
    socket_path: PathBuf,
    temp_dir: Option<PathBuf>,
    serving: Mutex<Option<Serving>>,
}

/// The accept loop and the socket file it serves on.
#[derive(Debug)]
struct Serving {
    task: JoinHandle<()>,
    socket: SocketFile,
}

/// Identity of the socket file we bound, so we never remove a file another
/// server has since bound at the same path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SocketFile {
    dev: u64,
    ino: u64,
}

impl FakeCriServer {
    /// Serves on `cri.sock` in a fresh directory under
    /// [`std::env::temp_dir`], unique per call.
    pub async fn start() -> io::Result<FakeCriServer> {
        let dir = make_temp_dir()?;
        match Self::serve(dir.join("cri.sock"), Some(dir.clone())) {
            Ok(server) => Ok(server),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// Serves on this socket path. The parent directory must exist; a socket
    /// file already at the path is replaced, as containerd does on start.
    pub async fn start_at(path: impl Into<PathBuf>) -> io::Result<FakeCriServer> {
        Self::serve(std::path::absolute(path.into())?, None)
    }

    fn serve(socket_path: PathBuf, temp_dir: Option<PathBuf>) -> io::Result<FakeCriServer> {
        let shared = Arc::new(Shared::default());
        let serving = serve_on(&shared, &socket_path)?;
        Ok(FakeCriServer {
            shared,
            socket_path,
            temp_dir,
            serving: Mutex::new(Some(serving)),
        })
    }

    /// The endpoint a CRI client dials: `unix:///abs/path.sock`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket_path.display())
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    // --- state ---

    /// Sets what `Version` answers. The default is version `0.1.0`, runtime
    /// `fake-cri` `0.1.0`, API `v1`.
    pub fn set_version(&self, version: VersionResponse) {
        self.shared.state.lock().version = version;
    }

    /// Adds the sandbox, or replaces the one with the same id (which may be
    /// empty), keeping its place in listings. Pushes no event.
    pub fn put_sandbox(&self, sandbox: PodSandbox) {
        self.shared.state.lock().put_sandbox(sandbox);
    }

    /// Adds the container, or replaces the one with the same id, keeping its
    /// place in listings. Forgets any status detail for that id, so call
    /// [`set_container_status`](Self::set_container_status) afterwards. Pushes
    /// no event.
    pub fn put_container(&self, container: Container) {
        self.shared.state.lock().put_container(container);
    }

    /// Sets the detail `ContainerStatus` answers for `status.id` (exit code,
    /// reason, start and finish times), served as given until the container
    /// is put again or removed. Without it the answer is derived from the
    /// listed container: an exited container then reports exit code 0, reason
    /// `Completed`, and its creation time as start and finish time.
    pub fn set_container_status(&self, status: ContainerStatus) {
        let mut state = self.shared.state.lock();
        state.statuses.insert(status.id.clone(), status);
    }

    /// Sets the IPs `PodSandboxStatus` reports for a sandbox: the first as
    /// `network.ip`, the rest as `additional_ips`.
    pub fn set_sandbox_ips(&self, sandbox_id: &str, ips: Vec<String>) {
        let mut state = self.shared.state.lock();
        state.sandbox_ips.insert(sandbox_id.to_owned(), ips);
    }

    /// Removes a sandbox and its IPs (not its containers). Pushes no event.
    pub fn remove_sandbox(&self, id: &str) {
        let mut state = self.shared.state.lock();
        state.sandboxes.retain(|s| s.id != id);
        state.sandbox_ips.remove(id);
    }

    /// Removes a container and its status detail. Pushes no event.
    pub fn remove_container(&self, id: &str) {
        let mut state = self.shared.state.lock();
        state.containers.retain(|c| c.id != id);
        state.statuses.remove(id);
    }

    /// Removes every sandbox, container, status detail and IP. Faults,
    /// counters, events and the version stay.
    pub fn clear(&self) {
        let mut state = self.shared.state.lock();
        state.sandboxes.clear();
        state.containers.clear();
        state.statuses.clear();
        state.sandbox_ips.clear();
    }

    /// The sandboxes stored now, in listing order.
    pub fn sandboxes(&self) -> Vec<PodSandbox> {
        self.shared.state.lock().sandboxes.clone()
    }

    /// The containers stored now, in listing order.
    pub fn containers(&self) -> Vec<Container> {
        self.shared.state.lock().containers.clone()
    }

    /// Makes a running container exit by itself with `exit_code` (reason
    /// `Completed` for 0, `Error` otherwise) and pushes `CONTAINER_STOPPED`,
    /// as the runtime does when a process ends. Returns false, changing
    /// nothing, if the container is unknown or not running.
    pub fn exit_container(&self, id: &str, exit_code: i32) -> bool {
        let reason = if exit_code == 0 { "Completed" } else { "Error" };
        self.shared
            .drive(|state, events| {
                let running = state.container(id).is_some_and(|c| is_running(c.state));
                if running {
                    state.kill(id, exit_code, reason, events);
                }
                Ok(running)
            })
            .unwrap_or(false)
    }

    // --- faults ---

    /// Makes calls of `method` fail with `status`: the next `times` calls, or
    /// every call until [`clear_faults`](Self::clear_faults) with `None`.
    /// Failures queue per method: a second `fail` applies once the first is
    /// used up (never, behind one given `None`). `Some(0)` does nothing.
    ///
    /// `method` is a proto method name such as `ListContainers` (see
    /// [`method`]) or its gRPC path.
    ///
    /// # Panics
    /// If `method` is not a `RuntimeService` method, so that a typo fails the
    /// test instead of silently injecting nothing.
    pub fn fail(&self, method: &str, status: Status, times: Option<usize>) {
        let method = known_method(method);
        if times == Some(0) {
            return;
        }
        let mut faults = self.shared.faults.lock();
        let entry = faults.entry(method).or_default();
        entry.failures.push_back(Failure {
            status,
            remaining: times,
        });
    }

    /// Makes every following call of `method` wait `delay` (tokio time) before
    /// it answers or fails. A zero delay removes it.
    ///
    /// # Panics
    /// If `method` is not a `RuntimeService` method.
    pub fn delay(&self, method: &str, delay: Duration) {
        let method = known_method(method);
        self.shared.faults.lock().entry(method).or_default().delay = delay;
    }

    /// Removes every scripted failure and delay. Calls already waiting keep
    /// their delay and outcome.
    pub fn clear_faults(&self) {
        self.shared.faults.lock().clear();
    }

    /// Closes every open connection at once and keeps serving: clients see a
    /// transport error on calls and streams in flight, and a channel connects
    /// again on a following call (the first may still fail, if the client sent
    /// it before noticing the close). Every event stream is gone from this moment,
    /// so events pushed afterwards wait in the backlog for the next stream.
    /// Returns how many connections were cut.
    pub fn drop_connections(&self) -> usize {
        self.shared.cut_connections()
    }

    /// Stops serving: stops accepting, removes the socket file and closes
    /// every connection, as [`drop_connections`](Self::drop_connections)
    /// does. New connections fail until [`resume`](Self::resume).
    pub async fn pause(&self) {
        let serving = self.serving.lock().take();
        if let Some(serving) = serving {
            serving.task.abort();
            // Wait until the listener is closed, so no connection slips in.
            let _ = serving.task.await;
            remove_socket_file(&self.socket_path, serving.socket);
        }
        self.shared.cut_connections();
    }

    /// Serves again on the same path after [`pause`](Self::pause). Does
    /// nothing while serving.
    pub async fn resume(&self) -> io::Result<()> {
        let mut serving = self.serving.lock();
        if serving.is_none() {
            *serving = Some(serve_on(&self.shared, &self.socket_path)?);
        }
        Ok(())
    }

    /// Whether the server is accepting connections (not paused).
    pub fn is_serving(&self) -> bool {
        self.serving.lock().is_some()
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.shared.connections.open()
    }

    /// Connections accepted since the start.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.connections.accepted.load(Ordering::Relaxed)
    }

    // --- counters ---

    /// Calls of `method` so far, failed and delayed ones included (0 for a
    /// name that is not a method).
    pub fn calls(&self, method: &str) -> u64 {
        method::canonical(method)
            .and_then(|m| self.shared.calls.lock().get(m).copied())
            .unwrap_or(0)
    }

    /// Calls of all methods so far.
    pub fn total_calls(&self) -> u64 {
        self.shared.calls.lock().values().sum()
    }

    /// Sets every call counter to zero.
    pub fn reset_calls(&self) {
        self.shared.calls.lock().clear();
    }

    // --- container events ---

    /// Sends an event to every open event stream, or keeps it for the next
    /// stream while none is open (see [Events](self#events)).
    pub fn push_event(&self, event: ContainerEventResponse) {
        self.shared.events.lock().publish(event);
    }

    /// Makes `GetContainerEvents` answer `Unimplemented`, as a server without
    /// the method does (containerd 1.6 and older), and stops the driver RPCs
    /// from generating events. Some containerd 1.6 patch releases answer
    /// `Unknown` "not implemented" instead; script that with [`fail`].
    /// Streams already open stay open.
    ///
    /// [`fail`]: Self::fail
    pub fn set_events_unimplemented(&self, yes: bool) {
        self.shared.events.lock().unimplemented = yes;
    }

    /// Ends every open event stream: with `status` as its final error if
    /// given, cleanly otherwise.
    pub fn end_event_streams(&self, status: Option<Status>) {
        self.shared.events.lock().end_all(status);
    }

    /// Event streams open now.
    pub fn event_streams(&self) -> usize {
        self.shared.events.lock().open_streams()
    }

    /// Events waiting for the next stream.
    pub fn buffered_events(&self) -> usize {
        self.shared.events.lock().backlog.len()
    }

    /// Events dropped because the backlog was full.
    pub fn dropped_events(&self) -> u64 {
        self.shared.events.lock().dropped
    }
}

impl Drop for FakeCriServer {
    fn drop(&mut self) {
        if let Some(serving) = self.serving.get_mut().take() {
            serving.task.abort();
            remove_socket_file(&self.socket_path, serving.socket);
        }
        // The aborted accept loop may still be mid-poll on another thread.
        self.shared.connections.refuse_new();
        self.shared.cut_connections();
        if let Some(dir) = &self.temp_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

// --- builders ---

/// A sandbox with metadata (attempt 0), the kubelet's pod labels and the
/// current time as its creation time.
pub fn sandbox(
    id: &str,
    uid: &str,
    name: &str,
    namespace: &str,
    state: PodSandboxState,
) -> PodSandbox {
    PodSandbox {
        id: id.to_owned(),
        metadata: Some(cri::PodSandboxMetadata {
            name: name.to_owned(),
            uid: uid.to_owned(),
            namespace: namespace.to_owned(),
            attempt: 0,
        }),
        state: state as i32,
        created_at: wall_clock_ns(),
        labels: HashMap::from([
            (POD_NAME_LABEL.to_owned(), name.to_owned()),
            (POD_NAMESPACE_LABEL.to_owned(), namespace.to_owned()),
            (POD_UID_LABEL.to_owned(), uid.to_owned()),
        ]),
        annotations: HashMap::new(),
        runtime_handler: String::new(),
    }
}

/// A container with metadata, an image, the kubelet's container-name label
/// and the current time as its creation time. It carries no pod labels, since
/// the pod is not known here; [`container_in`] adds them.
pub fn container(
    id: &str,
    sandbox_id: &str,
    name: &str,
    attempt: u32,
    state: ContainerState,
) -> Container {
    let image = cri::ImageSpec {
        image: "docker.io/library/busybox:latest".to_owned(),
        ..cri::ImageSpec::default()
    };
    Container {
        id: id.to_owned(),
        pod_sandbox_id: sandbox_id.to_owned(),
        metadata: Some(cri::ContainerMetadata {
            name: name.to_owned(),
            attempt,
        }),
        image_ref: image.image.clone(),
        image: Some(image),
        state: state as i32,
        created_at: wall_clock_ns(),
        labels: HashMap::from([(CONTAINER_NAME_LABEL.to_owned(), name.to_owned())]),
        annotations: HashMap::new(),
        image_id: String::new(),
    }
}

/// A [`container`] of `sandbox`, also carrying the kubelet's pod labels
/// (pod name, namespace and UID) copied from the sandbox.
pub fn container_in(
    sandbox: &PodSandbox,
    id: &str,
    name: &str,
    attempt: u32,
    state: ContainerState,
) -> Container {
    let mut c = container(id, &sandbox.id, name, attempt, state);
    for key in [POD_NAME_LABEL, POD_NAMESPACE_LABEL, POD_UID_LABEL] {
        if let Some(value) = sandbox.labels.get(key) {
            c.labels.insert(key.to_owned(), value.clone());
        }
    }
    c
}

// --- the shared server state ---

/// Everything the handlers and the handle share. Lock order: `state` before
/// `events`; nothing holds another lock while taking `state`.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<RuntimeState>,
    faults: Mutex<HashMap<&'static str, MethodFaults>>,
    calls: Mutex<HashMap<&'static str, u64>>,
    events: Arc<Mutex<EventHub>>,
    connections: Arc<Connections>,
}

/// Faults scripted for one method.
#[derive(Debug, Default)]
struct MethodFaults {
    failures: VecDeque<Failure>,
    delay: Duration,
}

/// A scripted failure; `remaining: None` means until cleared.
#[derive(Debug)]
struct Failure {
    status: Status,
    remaining: Option<usize>,
}

impl Shared {
    /// Counts the call, waits out its delay and applies a scripted failure.
    async fn enter(&self, method: &'static str) -> Result<(), Status> {
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
    fn drive<T>(
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
    fn cut_connections(&self) -> usize {
        let cut = self.connections.cut_all();
        self.events.lock().end_all(None);
        cut
    }

    async fn unimplemented<T>(&self, method: &'static str) -> Result<T, Status> {
        self.enter(method).await?;
        Err(Status::unimplemented(format!(
            "unknown method {method} for service runtime.v1.RuntimeService"
        )))
    }
}

fn take_failure(failures: &mut VecDeque<Failure>) -> Option<Status> {
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

fn known_method(name: &str) -> &'static str {
    match method::canonical(name) {
        Some(m) => m,
        None => panic!(
            "fake CRI: {name:?} is not a runtime.v1.RuntimeService method; use the names in pleg::runtime::fake_cri::method"
        ),
    }
}

// --- the tiny runtime ---

/// What the fake runtime holds.
#[derive(Debug)]
struct RuntimeState {
    version: VersionResponse,
    sandboxes: Vec<PodSandbox>,
    containers: Vec<Container>,
    /// Status detail by container id; derived from the container when absent.
    statuses: HashMap<String, ContainerStatus>,
    sandbox_ips: HashMap<String, Vec<String>>,
    last_timestamp: i64,
    id_seed: u64,
    ids_made: u64,
    ips_made: u32,
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
            id_seed: random_u64(),
            ids_made: 0,
            ips_made: 0,
        }
    }
}

impl RuntimeState {
    /// Wall-clock nanoseconds, strictly increasing across calls, so that
    /// events never share a timestamp.
    fn now(&mut self) -> i64 {
        let now = wall_clock_ns().max(self.last_timestamp.saturating_add(1));
        self.last_timestamp = now;
        now
    }

    /// A fresh 64-hex-digit id, like containerd's.
    fn new_id(&mut self) -> String {
        self.ids_made += 1;
        let mut x = self.id_seed ^ self.ids_made.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut id = String::with_capacity(64);
        for _ in 0..4 {
            x = splitmix64(x);
            id.push_str(&format!("{x:016x}"));
        }
        id
    }

    fn next_pod_ip(&mut self) -> String {
        // 10.88.0.2 onwards, like containerd's default CNI network.
        let n = self.ips_made % (256 * 254) + 2;
        self.ips_made += 1;
        format!("10.88.{}.{}", n / 256, n % 256)
    }

    fn sandbox(&self, id: &str) -> Option<&PodSandbox> {
        self.sandboxes.iter().find(|s| s.id == id)
    }

    fn container(&self, id: &str) -> Option<&Container> {
        self.containers.iter().find(|c| c.id == id)
    }

    fn put_sandbox(&mut self, sandbox: PodSandbox) {
        match self.sandboxes.iter_mut().find(|s| s.id == sandbox.id) {
            Some(slot) => *slot = sandbox,
            None => self.sandboxes.push(sandbox),
        }
    }

    fn put_container(&mut self, container: Container) {
        self.statuses.remove(&container.id);
        match self.containers.iter_mut().find(|c| c.id == container.id) {
            Some(slot) => *slot = container,
            None => self.containers.push(container),
        }
    }

    fn sandbox_status(&self, id: &str) -> Option<PodSandboxStatus> {
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

    fn container_status(&self, id: &str) -> Option<ContainerStatus> {
        match self.statuses.get(id) {
            Some(detail) => Some(detail.clone()),
            None => self.container(id).map(derived_status),
        }
    }

    /// The statuses of every container in the sandbox, in listing order.
    fn statuses_in(&self, sandbox_id: &str) -> Vec<ContainerStatus> {
        self.containers
            .iter()
            .filter(|c| c.pod_sandbox_id == sandbox_id)
            .filter_map(|c| self.container_status(&c.id))
            .collect()
    }

    /// The status detail of a stored container, derived first if need be.
    fn detail_mut(&mut self, id: &str) -> Option<&mut ContainerStatus> {
        if !self.statuses.contains_key(id) {
            let derived = derived_status(self.container(id)?);
            self.statuses.insert(id.to_owned(), derived);
        }
        self.statuses.get_mut(id)
    }

    /// The event containerd sends: the sandbox's status and the statuses of
    /// all its containers, as they are now.
    fn event(
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

    fn list_sandboxes(&self, filter: Option<&cri::PodSandboxFilter>) -> Vec<PodSandbox> {
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

    fn list_containers(&self, filter: Option<&cri::ContainerFilter>) -> Vec<Container> {
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

    fn run_pod_sandbox(
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

    fn stop_pod_sandbox(
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

    fn remove_pod_sandbox(
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

    fn create_container(
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

    fn start_container(
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

    fn stop_container(
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

    fn remove_container(&mut self, id: &str, events: &mut Vec<ContainerEventResponse>) {
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
    fn kill(
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
fn derived_status(c: &Container) -> ContainerStatus {
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
fn is_running(state: i32) -> bool {
    state == ContainerState::ContainerRunning as i32
        || state == ContainerState::ContainerUnknown as i32
}

fn container_state_name(state: i32) -> &'static str {
    ContainerState::try_from(state).map_or("UNKNOWN", |s| s.as_str_name())
}

fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn sandbox_not_found(id: &str) -> Status {
    Status::not_found(format!(
        "an error occurred when try to find sandbox {id:?}: not found"
    ))
}

fn container_not_found(id: &str) -> Status {
    Status::not_found(format!(
        "an error occurred when try to find container {id:?}: not found"
    ))
}

fn now_ns_of(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn wall_clock_ns() -> i64 {
    now_ns_of(SystemTime::now())
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A random number from the standard library's per-process hash keys.
fn random_u64() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    hasher.write_i64(wall_clock_ns());
    hasher.finish()
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

// --- container events ---

type EventItem = Result<ContainerEventResponse, Status>;

/// Open event streams and the backlog kept while none is open.
#[derive(Debug, Default)]
struct EventHub {
    unimplemented: bool,
    streams: Vec<(u64, mpsc::UnboundedSender<EventItem>)>,
    backlog: VecDeque<ContainerEventResponse>,
    dropped: u64,
    streams_opened: u64,
}

impl EventHub {
    fn open_streams(&mut self) -> usize {
        self.streams.retain(|(_, tx)| !tx.is_closed());
        self.streams.len()
    }

    fn publish(&mut self, event: ContainerEventResponse) {
        if self.open_streams() == 0 {
            if self.backlog.len() < EVENT_BACKLOG {
                self.backlog.push_back(event);
            } else {
                self.dropped += 1;
            }
            return;
        }
        for (_, tx) in &self.streams {
            let _ = tx.send(Ok(event.clone()));
        }
    }

    fn end_all(&mut self, status: Option<Status>) {
        for (_, tx) in self.streams.drain(..) {
            if let Some(status) = &status {
                let _ = tx.send(Err(status.clone()));
            }
        }
    }
}

/// Opens a stream that first receives the backlog.
fn subscribe(hub: &Arc<Mutex<EventHub>>) -> Result<EventStream, Status> {
    let mut events = hub.lock();
    if events.unimplemented {
        return Err(Status::unimplemented(
            "unknown method GetContainerEvents for service runtime.v1.RuntimeService",
        ));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    for event in events.backlog.drain(..) {
        let _ = tx.send(Ok(event));
    }
    events.streams_opened += 1;
    let id = events.streams_opened;
    events.streams.push((id, tx));
    Ok(EventStream {
        rx,
        id,
        hub: Arc::clone(hub),
    })
}

/// The response stream of one `GetContainerEvents` call; deregisters when
/// hyper drops it (client gone or connection cut).
#[derive(Debug)]
struct EventStream {
    rx: mpsc::UnboundedReceiver<EventItem>,
    id: u64,
    hub: Arc<Mutex<EventHub>>,
}

impl Stream for EventStream {
    type Item = EventItem;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<EventItem>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.hub.lock().streams.retain(|(id, _)| *id != self.id);
    }
}

// --- serving and connections ---

/// Binds the socket and spawns the accept loop.
fn serve_on(shared: &Arc<Shared>, path: &Path) -> io::Result<Serving> {
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
    {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    let meta = std::fs::symlink_metadata(path)?;
    let socket = SocketFile {
        dev: meta.dev(),
        ino: meta.ino(),
    };
    shared.connections.accept_new();
    let incoming = Incoming {
        listener,
        connections: Arc::clone(&shared.connections),
    };
    let service = RuntimeServiceServer::from_arc(Arc::clone(shared));
    let task = tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "fake CRI server stopped");
        }
    });
    Ok(Serving { task, socket })
}

fn remove_socket_file(path: &Path, socket: SocketFile) {
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.dev() == socket.dev
        && meta.ino() == socket.ino
    {
        let _ = std::fs::remove_file(path);
    }
}

fn make_temp_dir() -> io::Result<PathBuf> {
    static DIRS_MADE: AtomicU64 = AtomicU64::new(0);
    for _ in 0..16 {
        let dir = std::env::temp_dir().join(format!(
            "pleg-fake-cri-{}-{}-{:08x}",
            std::process::id(),
            DIRS_MADE.fetch_add(1, Ordering::Relaxed),
            random_u64() as u32,
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "fake CRI: no free temporary directory name",
    ))
}

/// The open connections, each as a duplicate of its socket's descriptor so
/// that it can be shut down from outside the task serving it.
#[derive(Debug, Default)]
struct Connections {
    inner: Mutex<ConnectionsInner>,
    accepted: AtomicU64,
}

#[derive(Debug, Default)]
struct ConnectionsInner {
    open: HashMap<u64, std::os::unix::net::UnixStream>,
    next_id: u64,
    refusing: bool,
}

impl Connections {
    fn register(self: &Arc<Self>, stream: UnixStream) -> io::Result<Connection> {
        let stream = stream.into_std()?;
        let handle = stream.try_clone()?;
        let stream = UnixStream::from_std(stream)?;
        let mut inner = self.inner.lock();
        if inner.refusing {
            let _ = handle.shutdown(Shutdown::Both);
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "fake CRI server is shutting down",
            ));
        }
        inner.next_id += 1;
        let id = inner.next_id;
        inner.open.insert(id, handle);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(Connection {
            stream,
            id,
            connections: Arc::clone(self),
        })
    }

    fn open(&self) -> usize {
        self.inner.lock().open.len()
    }

    /// Shuts every open connection down; returns how many.
    fn cut_all(&self) -> usize {
        let cut: Vec<_> = self.inner.lock().open.drain().map(|(_, s)| s).collect();
        for socket in &cut {
            // Fails only if the peer is already gone, which is the goal.
            let _ = socket.shutdown(Shutdown::Both);
        }
        cut.len()
    }

    fn refuse_new(&self) {
        self.inner.lock().refusing = true;
    }

    fn accept_new(&self) {
        self.inner.lock().refusing = false;
    }
}

/// Accepted connections, registered as they come.
struct Incoming {
    listener: UnixListener,
    connections: Arc<Connections>,
}

impl Stream for Incoming {
    type Item = io::Result<Connection>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.listener.poll_accept(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok((stream, _))) => Poll::Ready(Some(this.connections.register(stream))),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
        }
    }
}

/// One accepted connection; leaves the registry when hyper drops it.
#[derive(Debug)]
struct Connection {
    stream: UnixStream,
    id: u64,
    connections: Arc<Connections>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.connections.inner.lock().open.remove(&self.id);
    }
}

impl Connected for Connection {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> UdsConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
    use tonic::Code;
    use tonic::transport::{Channel, Endpoint};

    const PATIENCE: Duration = Duration::from_secs(5);

    async fn connect(server: &FakeCriServer) -> RuntimeServiceClient<Channel> {
        let channel = Endpoint::from_shared(server.endpoint())
            .expect("a valid endpoint")
            .connect()
            .await
            .expect("the fake CRI server accepts connections");
        RuntimeServiceClient::new(channel)
    }

    /// Waits until `condition` holds, polling; fails the test after PATIENCE.
    async fn until(what: &str, mut condition: impl FnMut() -> bool) {
        let polled = tokio::time::timeout(PATIENCE, async {
            while !condition() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        assert!(polled.is_ok(), "timed out waiting for {what}");
    }

    async fn version(
        client: &mut RuntimeServiceClient<Channel>,
    ) -> Result<VersionResponse, Status> {
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
                    label_selector: HashMap::from([(
                        CONTAINER_NAME_LABEL.into(),
                        "sidecar".into(),
                    )]),
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
        until("the delayed call to be counted", || {
            server.calls(method::VERSION) == 2
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
        until("the parked call", || {
            server.calls(method::LIST_CONTAINERS) == 1
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
        version(&mut connect(&server).await)
            .await
            .expect("a new connection works");
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
        let dir = make_temp_dir().expect("a directory");
        let path = dir.join("containerd.sock");
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
        assert!(dir.exists(), "start_at leaves the directory alone");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
