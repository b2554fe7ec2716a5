//! Fixtures for the tests against a real containerd: the endpoint and image
//! from the environment `scripts/containerd.sh env` prints, pods driven
//! through the test kit's CRI driver, and per-pod event subscriptions.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use pleg::model::{Container, ContainerState, PodUid};
use pleg::runtime::cri::{CriConfig, CriRuntime};
use pleg::{
    Config, Delivery, EventType, Filter, Pleg, PodLifecycleEvent, RelistDuration, SubscribeOptions,
    Subscription,
};
use pleg_testkit::driver::{ContainerSpec, Driver, PodSpec};

/// A child process (a `pleg run`, a client) killed when the test ends.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// SIGTERM, then waits for the exit.
    pub fn terminate(mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.0.wait();
    }
}

/// A TCP port on the loopback that nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The namespace every test pod lives in.
pub const NAMESPACE: &str = "pleg-test";

fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{name} is not set: these tests need the project-local containerd; \
             run scripts/test.sh, or `scripts/containerd.sh up` and \
             `eval \"$(scripts/containerd.sh env)\"` first"
        ),
    }
}

/// The containerd endpoint under test (1.7, or the one
/// [`containerd_version`] names).
pub fn endpoint() -> String {
    env("PLEG_CONTAINERD_ENDPOINT")
}

/// Which project-local containerd [`endpoint`] is (`scripts/containerd.sh
/// --version`): `PLEG_CONTAINERD_VERSION`, 1.7 unless set. scripts/test.sh
/// sets it to 2.1 when it runs the tests again against 2.1.
pub fn containerd_version() -> String {
    std::env::var("PLEG_CONTAINERD_VERSION")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "1.7".to_string())
}

/// The busybox image imported into containerd.
pub fn image() -> String {
    env("PLEG_TEST_IMAGE")
}

/// Logs of the library at `warn` and above (or as `RUST_LOG` says), into
/// the test's captured output: a failing test shows what the generator
/// complained of.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("pleg=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A connected runtime.
pub async fn runtime() -> Arc<CriRuntime> {
    init_logs();
    CriRuntime::connect(CriConfig::new(endpoint()))
        .await
        .unwrap_or_else(|e| panic!("connecting to containerd: {e}"))
}

/// A workload driver for containerd 1.7.
pub fn driver() -> Arc<Driver> {
    Arc::new(Driver::new(&endpoint()).unwrap_or_else(|e| panic!("containerd endpoint: {e}")))
}

/// A generator over the runtime that relists only when told to (period 1 h),
/// with the kubelet's 3-minute threshold.
pub fn generator(runtime: Arc<CriRuntime>) -> Pleg {
    Pleg::new(
        runtime,
        Config::generic().with_relist(RelistDuration {
            relist_period: Duration::from_secs(3600),
            relist_threshold: Duration::from_secs(180),
        }),
    )
    .expect("valid config")
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Subscribes to the events of these pods, `ContainerChanged` included.
pub fn subscribe_pods(pleg: &Pleg, uids: &[&str]) -> Subscription {
    subscribe_pods_with(pleg, uids, true)
}

/// Subscribes to the events of these pods, with or without `ContainerChanged`.
pub fn subscribe_pods_with(pleg: &Pleg, uids: &[&str], changed: bool) -> Subscription {
    pleg.subscribe_with(SubscribeOptions::filtered(
        Filter::all()
            .with_pod_uids(uids.iter().map(PodUid::new))
            .with_container_changed(changed),
    ))
    .expect("valid options")
}

/// The events queued for the subscriber, without waiting.
pub fn events(sub: &mut Subscription) -> Vec<Arc<PodLifecycleEvent>> {
    std::iter::from_fn(|| sub.try_recv())
        .map(|d| match d {
            Delivery::Event(e) => e,
            Delivery::Resync { missed, .. } => {
                panic!("subscriber lagged and missed {missed} events")
            }
            other => panic!("unexpected delivery {other:?}"),
        })
        .collect()
}

/// (kind, container id) of each event, in order.
pub fn kinds(events: &[Arc<PodLifecycleEvent>]) -> Vec<(EventType, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.container_id().map(|c| c.to_string()).unwrap_or_default(),
            )
        })
        .collect()
}

/// A shell loop that runs until the test creates `/trigger/<name>`, then
/// exits with `code`.
pub fn until_triggered(name: &str, code: i32) -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("while [ ! -e /trigger/{name} ]; do sleep 0.05; done; exit {code}"),
    ]
}

/// A pod sandbox in containerd with a host directory mounted into its
/// containers at `/trigger`, so that the test decides when they exit.
pub struct TestPod {
    /// What the pod was created from.
    pub spec: PodSpec,
    /// The sandbox ID.
    pub sandbox_id: String,
    trigger_dir: PathBuf,
}

impl TestPod {
    /// Runs a sandbox for a new pod.
    pub async fn run(driver: &Driver, name: &str) -> TestPod {
        let name = unique(name);
        let spec = PodSpec::new(name.clone(), NAMESPACE, format!("uid-{name}"))
            .with_label("pleg.test/name", name.clone());
        let trigger_dir = std::env::temp_dir().join(format!("pleg-trigger-{name}"));
        std::fs::create_dir_all(&trigger_dir).expect("trigger directory");
        let sandbox_id = driver
            .run_pod(&spec)
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}"));
        TestPod {
            spec,
            sandbox_id,
            trigger_dir,
        }
    }

    /// The pod UID.
    pub fn uid(&self) -> &str {
        &self.spec.uid
    }

    /// Creates and starts a container running `command`; returns its ID.
    pub async fn start(
        &self,
        driver: &Driver,
        name: &str,
        attempt: u32,
        command: Vec<String>,
    ) -> String {
        let id = self.create(driver, name, attempt, command).await;
        driver
            .start_container(&id)
            .await
            .unwrap_or_else(|e| panic!("StartContainer {name}: {e}"));
        id
    }

    /// Creates (without starting) a container running `command`.
    pub async fn create(
        &self,
        driver: &Driver,
        name: &str,
        attempt: u32,
        command: Vec<String>,
    ) -> String {
        let spec = ContainerSpec::new(name, image(), command)
            .with_attempt(attempt)
            .with_mount(&self.trigger_dir, "/trigger");
        driver
            .create_container(&self.sandbox_id, &self.spec, &spec)
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"))
    }

    /// Lets the containers waiting for `name` exit.
    pub fn trigger(&self, name: &str) {
        std::fs::write(self.trigger_dir.join(name), b"").expect("trigger file");
    }

    /// Stops and removes the sandbox (and with it its containers).
    pub async fn remove(&self, driver: &Driver) {
        driver
            .stop_pod(&self.sandbox_id)
            .await
            .unwrap_or_else(|e| panic!("StopPodSandbox: {e}"));
        driver
            .remove_pod(&self.sandbox_id)
            .await
            .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}"));
        let _ = std::fs::remove_dir_all(&self.trigger_dir);
    }
}

impl Drop for TestPod {
    /// The trigger directory goes with the pod, also when a test stops
    /// half-way or removes the pod through the runtime directly.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.trigger_dir);
    }
}

/// Waits until the runtime reports the container exited (at most 30 s).
pub async fn wait_exited(driver: &Driver, id: &str) -> Container {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match driver.container_status(id).await {
            Ok(c) if c.state == ContainerState::Exited => return c,
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Ok(c) => panic!("container {id} still {} after 30s", c.state),
            Err(e) => panic!("ContainerStatus {id}: {e}"),
        }
    }
}

/// The containerd 1.6 endpoint (no `GetContainerEvents`), for the fallback
/// tests.
pub fn endpoint16() -> String {
    env("PLEG_CONTAINERD16_ENDPOINT")
}

/// A workload driver for containerd 1.6.
pub fn driver16() -> Arc<Driver> {
    Arc::new(Driver::new(&endpoint16()).unwrap_or_else(|e| panic!("containerd 1.6 endpoint: {e}")))
}

/// A runtime connected to containerd 1.6.
pub async fn runtime16() -> Arc<CriRuntime> {
    CriRuntime::connect(CriConfig::new(endpoint16()))
        .await
        .unwrap_or_else(|e| panic!("connecting to containerd 1.6: {e}"))
}

/// A pod whose name and UID are chosen before its sandbox runs, so that a
/// test can subscribe to it first: on the event stream, its events arrive as
/// soon as the runtime sends them.
pub struct PlannedPod {
    /// What the pod will be created from.
    pub spec: PodSpec,
    trigger_dir: PathBuf,
}

impl PlannedPod {
    /// Names a new pod, like [`TestPod::run`] does.
    pub fn new(name: &str) -> PlannedPod {
        let name = unique(name);
        let spec = PodSpec::new(name.clone(), NAMESPACE, format!("uid-{name}"))
            .with_label("pleg.test/name", name.clone());
        let trigger_dir = std::env::temp_dir().join(format!("pleg-trigger-{name}"));
        PlannedPod { spec, trigger_dir }
    }

    /// The pod UID.
    pub fn uid(&self) -> &str {
        &self.spec.uid
    }

    /// Runs the pod's sandbox.
    pub async fn run(self, driver: &Driver) -> TestPod {
        std::fs::create_dir_all(&self.trigger_dir).expect("trigger directory");
        let sandbox_id = driver
            .run_pod(&self.spec)
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox {}: {e}", self.spec.name));
        TestPod {
            spec: self.spec,
            sandbox_id,
            trigger_dir: self.trigger_dir,
        }
    }
}

impl TestPod {
    /// Deletes the trigger directory, for a pod the test removed through the
    /// runtime itself rather than [`TestPod::remove`].
    pub fn forget_trigger_dir(&self) {
        let _ = std::fs::remove_dir_all(&self.trigger_dir);
    }
}

// --- shared by the toolkit's tests (containerd_toolkit, containerd_monitor) ---

/// How long an `events_until` waits.
const EVENT_WAIT: Duration = Duration::from_secs(20);

/// A started generator that relists every 100 ms (never the event stream),
/// with the kubelet's 3-minute threshold.
pub async fn relisting() -> Pleg {
    let pleg = Pleg::new(
        runtime().await,
        Config::generic().with_relist(RelistDuration::new(
            Duration::from_millis(100),
            Duration::from_secs(180),
        )),
    )
    .expect("valid config");
    pleg.start().expect("start");
    pleg
}

/// Events until one matches `last` (included), waiting at most [`EVENT_WAIT`] in
/// all; `what` names it in the failure.
pub async fn events_until(
    sub: &mut Subscription,
    what: &str,
    mut last: impl FnMut(&PodLifecycleEvent) -> bool,
) -> Vec<Arc<PodLifecycleEvent>> {
    let deadline = tokio::time::Instant::now() + EVENT_WAIT;
    let mut got = Vec::new();
    loop {
        let e = match tokio::time::timeout_at(deadline, sub.recv()).await {
            Ok(Some(Delivery::Event(e))) => e,
            Ok(other) => panic!("{other:?} while waiting for {what}, after {got:?}"),
            Err(_) => panic!(
                "timed out after {EVENT_WAIT:?} waiting for {what}; came: {:?}",
                described(&got)
            ),
        };
        let done = last(&e);
        got.push(e);
        if done {
            return got;
        }
    }
}

/// Whether `e` is an event of this kind about this container or sandbox.
pub fn is(e: &PodLifecycleEvent, kind: EventType, id: &str) -> bool {
    e.kind == kind && e.container_id().is_some_and(|c| c.as_str() == id)
}

/// Events in full, for failure messages.
pub fn described(events: &[Arc<PodLifecycleEvent>]) -> Vec<String> {
    events.iter().map(|e| e.to_string()).collect()
}

/// Removes the pods it was given if the test panics before removing them.
/// Drop cannot await, so the removal runs on a thread of its own, with its
/// own connection; errors are ignored (the pod may be gone already).
pub struct Cleanup {
    sandboxes: Vec<String>,
}

impl Cleanup {
    pub fn new() -> Self {
        Cleanup {
            sandboxes: Vec::new(),
        }
    }

    pub fn add(&mut self, pod: &TestPod) {
        self.sandboxes.push(pod.sandbox_id.clone());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !std::thread::panicking() || self.sandboxes.is_empty() {
            return;
        }
        let sandboxes = std::mem::take(&mut self.sandboxes);
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(runtime) = CriRuntime::connect(CriConfig::new(endpoint())).await {
                    for id in sandboxes {
                        let _ = runtime.stop_pod(&id).await;
                        let _ = runtime.remove_pod(&id).await;
                    }
                }
            });
        })
        .join();
    }
}
