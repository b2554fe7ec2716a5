//! A fake CRI runtime service on a unix socket, for wire-level fault tests.
//!
//! [`FakeCriServer`] serves `runtime.v1.RuntimeService` with tonic on a real
//! unix socket, so that pleg's real CRI client (tonic over `unix://path`) can
//! be pointed at it. Like [`pleg::runtime::fake`] it is scripted: the test sets
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
//!
//! # Layout
//! This file holds the handle and the builders; `state.rs` is the tiny
//! runtime, `service.rs` the `RuntimeService` impl and what every call goes
//! through (counting, delay, scripted failure), `events.rs` the event hub and
//! its streams, `socket.rs` the socket, its connections and cutting them.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::{
    Container, ContainerEventResponse, ContainerState, ContainerStatus, PodSandbox,
    PodSandboxState, VersionResponse,
};
use parking_lot::Mutex;
use tonic::Status;

mod events;
mod service;
mod socket;
mod state;
#[cfg(test)]
mod tests;

pub use events::EVENT_BACKLOG;
pub use service::method;

use service::{Failure, Shared, known_method};
use socket::{Serving, remove_socket_file, serve_on};
use state::{is_running, wall_clock_ns};

/// Labels the kubelet puts on sandboxes and containers.
const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";

/// A fake CRI runtime serving on a unix socket. Cheap to script from the test
/// while clients talk to it; dropping it stops serving, closes every
/// connection and removes the socket (and the directory [`start`] made).
///
/// [`start`]: FakeCriServer::start
#[derive(Debug)]
pub struct FakeCriServer {
    shared: Arc<Shared>,
    socket_path: PathBuf,
    /// The directory [`start`](Self::start) made, removed on drop.
    temp_dir: Option<tempfile::TempDir>,
    serving: Mutex<Option<Serving>>,
}

impl FakeCriServer {
    /// Serves on `cri.sock` in a fresh directory under
    /// [`std::env::temp_dir`], unique per call.
    pub async fn start() -> io::Result<FakeCriServer> {
        let dir = tempfile::Builder::new()
            .prefix("pleg-fake-cri-")
            .tempdir()?;
        // On failure the directory goes with `dir`.
        Self::serve(dir.path().join("cri.sock"), Some(dir))
    }

    /// Serves on this socket path. The parent directory must exist; a socket
    /// file already at the path is replaced, as containerd does on start.
    pub async fn start_at(path: impl Into<PathBuf>) -> io::Result<FakeCriServer> {
        Self::serve(std::path::absolute(path.into())?, None)
    }

    fn serve(
        socket_path: PathBuf,
        temp_dir: Option<tempfile::TempDir>,
    ) -> io::Result<FakeCriServer> {
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

    /// Makes every following answer of `method` arrive as bytes that are
    /// not its message (the first field's tag gets wire type 7, which
    /// protobuf does not have), with status OK: a runtime, or a proxy,
    /// sending what the client cannot decode. An empty answer (no bytes)
    /// stays empty. `false` sends answers as they are again.
    ///
    /// # Panics
    /// If `method` is not a `RuntimeService` method.
    pub fn garble(&self, method: &str, garbled: bool) {
        let method = known_method(method);
        self.shared.faults.lock().entry(method).or_default().garbled = garbled;
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
        // Last, once nothing serves in it any more.
        drop(self.temp_dir.take());
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
