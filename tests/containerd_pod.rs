//! pleg as a pod: the image `scripts/pleg-image.sh` builds from the binary
//! under test, run through CRI the way `deploy/daemonset.yaml` asks the
//! kubelet to run it, on the project-local containerd 1.7 that it then
//! watches.
//!
//! The pod comes from the manifest itself, so the two cannot drift: its
//! namespace and labels, the container's name, args, env, volume mounts and
//! `securityContext` (read-only root, no privilege escalation, capabilities
//! dropped: each checked in the running process from the host, through
//! `/proc`), the probes and the termination grace period. Only what
//! belongs to a node is remapped: the runtime socket's `hostPath` becomes
//! this containerd's socket (mounted where the manifest mounts it), the
//! `/run/pleg` `hostPath` a temporary directory, the health port a free one
//! (the pod shares the host's network), and the image the one just built.
//! Anything else in the manifest that the test does not know how to carry
//! out (another volume, a `securityContext` field) fails the test rather
//! than being skipped. `resources` are the kubelet's cgroup business and are
//! not applied.
//!
//! The test then acts as the kubelet's probes (from the host, on
//! 127.0.0.1), and as a node-local client on the gRPC socket in the shared
//! directory: the daemon lists its own pod, and a pod started afterwards
//! comes as `ContainerStarted` on a `Watch`. Stopped with the manifest's
//! grace period, the daemon exits 0 and removes its socket.
//!
//! The manifest runs pleg in evented mode. On containerd 1.7 each stream
//! event reaches one stream only, so no other evented consumer may run on
//! the same containerd meanwhile (the other evented tests are other test
//! binaries, which cargo runs one after another).
//!
//! containerd runs in a mount namespace of its own, with `/run` its own:
//! the host paths given to it are under the repo (its socket) and the
//! system temporary directory, which it sees as the host does.
//!
//! Run with `eval "$(scripts/containerd.sh env)"; cargo test --features
//! containerd-tests --test containerd_pod`.

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

mod cri_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cri_support::*;
use pleg::model::{ContainerState, PodUid};
use pleg::server::grpc::{Client, WatchStream};
use pleg::{Delivery, EventType, Filter};
use pleg_testkit::driver::{ContainerSpec, Driver, PodSpec};
use pleg_testkit::wait::{POLL_INTERVAL, eventually_async};

/// The manifest the pod is made from.
const MANIFEST: &str = "deploy/daemonset.yaml";

/// How long the image build, the start-up and each wait may take at most:
/// generous, for a busy machine (the image holds a debug build).
const WAIT: Duration = Duration::from_secs(120);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// --- what the manifest asks for ---

/// An `httpGet` probe of the manifest.
#[derive(Debug)]
struct Probe {
    host: String,
    path: String,
    port: u16,
    period: Duration,
    failure_threshold: u32,
}

/// A volume mount of the manifest, with its `hostPath` volume.
#[derive(Debug)]
struct HostMount {
    volume: String,
    container_path: PathBuf,
    host_path: PathBuf,
    host_path_type: String,
}

/// The DaemonSet's pod template, as far as a CRI runtime carries it out.
#[derive(Debug)]
struct Template {
    namespace: String,
    labels: BTreeMap<String, String>,
    container: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    mounts: Vec<HostMount>,
    readonly_rootfs: bool,
    no_new_privileges: bool,
    drop_capabilities: Vec<String>,
    liveness: Probe,
    readiness: Probe,
    grace: Duration,
}

fn str_of<'a>(value: &'a serde_yaml::Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{MANIFEST}: {what} is not a string: {value:?}"))
}

fn seq_of<'a>(value: &'a serde_yaml::Value, what: &str) -> &'a [serde_yaml::Value] {
    value
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{MANIFEST}: {what} is not a list: {value:?}"))
}

/// The value of `--name=value` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("--{name}=")))
}

fn probe(container: &serde_yaml::Value, name: &str) -> Probe {
    let probe = &container[name];
    let get = &probe["httpGet"];
    let port = get["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("{MANIFEST}: {name}.httpGet.port is not a port number"));
    // Kubernetes' defaults where the manifest says nothing.
    let period = probe["periodSeconds"].as_u64().unwrap_or(10);
    let failure_threshold = probe["failureThreshold"].as_u64().unwrap_or(3);
    Probe {
        host: str_of(&get["host"], &format!("{name}.httpGet.host")).to_string(),
        path: str_of(&get["path"], &format!("{name}.httpGet.path")).to_string(),
        port,
        period: Duration::from_secs(period),
        failure_threshold: u32::try_from(failure_threshold).expect("a small threshold"),
    }
}

impl Template {
    fn read() -> Template {
        let path = repo().join(MANIFEST);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{MANIFEST}: {e}"));
        let template = &doc["spec"]["template"];
        let spec = &template["spec"];
        assert_eq!(
            spec["hostNetwork"].as_bool(),
            Some(true),
            "{MANIFEST}: the pod is on the host network, as the driver's pods always are"
        );
        let containers = seq_of(&spec["containers"], "containers");
        assert_eq!(containers.len(), 1, "{MANIFEST}: one container");
        let container = &containers[0];
        let args: Vec<String> = seq_of(&container["args"], "args")
            .iter()
            .map(|a| str_of(a, "an arg").to_string())
            .collect();
        assert!(
            container["command"].is_null(),
            "{MANIFEST}: the image's entrypoint runs (no command)"
        );
        let env = container["env"]
            .as_sequence()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|e| {
                (
                    str_of(&e["name"], "env name").to_string(),
                    str_of(&e["value"], "env value").to_string(),
                )
            })
            .collect();
        let volumes = seq_of(&spec["volumes"], "volumes");
        let mounts = seq_of(&container["volumeMounts"], "volumeMounts")
            .iter()
            .map(|m| {
                let name = str_of(&m["name"], "volumeMounts name");
                let volume = volumes
                    .iter()
                    .find(|v| v["name"].as_str() == Some(name))
                    .unwrap_or_else(|| panic!("{MANIFEST}: no volume {name}"));
                let host = &volume["hostPath"];
                assert!(
                    host.is_mapping(),
                    "{MANIFEST}: volume {name} is not a hostPath; the test knows no other kind"
                );
                HostMount {
                    volume: name.to_string(),
                    container_path: str_of(&m["mountPath"], "mountPath").into(),
                    host_path: str_of(&host["path"], "hostPath.path").into(),
                    host_path_type: host["type"].as_str().unwrap_or_default().to_string(),
                }
            })
            .collect();
        let mut readonly_rootfs = false;
        let mut no_new_privileges = false;
        let mut drop_capabilities = Vec::new();
        if let Some(context) = container["securityContext"].as_mapping() {
            for (key, value) in context {
                match (key.as_str(), value.as_bool()) {
                    (Some("readOnlyRootFilesystem"), Some(on)) => readonly_rootfs = on,
                    (Some("allowPrivilegeEscalation"), Some(allowed)) => {
                        no_new_privileges = !allowed
                    }
                    (Some("capabilities"), None)
                        if value
                            .as_mapping()
                            .is_some_and(|m| m.keys().all(|k| k.as_str() == Some("drop"))) =>
                    {
                        drop_capabilities = seq_of(&value["drop"], "capabilities.drop")
                            .iter()
                            .map(|c| str_of(c, "a capability").to_string())
                            .collect();
                    }
                    _ => panic!(
                        "{MANIFEST}: securityContext.{key:?}: {value:?} is not carried out by \
                         this test; teach tests/containerd_pod.rs (and the test kit's driver) \
                         how"
                    ),
                }
            }
        }
        assert!(
            spec["securityContext"].is_null(),
            "{MANIFEST}: a pod-level securityContext is not carried out by this test"
        );
        Template {
            namespace: str_of(&doc["metadata"]["namespace"], "metadata.namespace").to_string(),
            labels: template["metadata"]["labels"]
                .as_mapping()
                .expect("pod labels")
                .iter()
                .map(|(k, v)| {
                    (
                        str_of(k, "label").to_string(),
                        str_of(v, "label").to_string(),
                    )
                })
                .collect(),
            container: str_of(&container["name"], "container name").to_string(),
            args,
            env,
            mounts,
            readonly_rootfs,
            no_new_privileges,
            drop_capabilities,
            liveness: probe(container, "livenessProbe"),
            readiness: probe(container, "readinessProbe"),
            // Kubernetes' default is 30 s.
            grace: Duration::from_secs(
                spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30),
            ),
        }
    }
}

// --- the node: where the manifest's host paths and port land here ---

/// The stand-ins for the node's paths and port, and the pod made from the
/// manifest with them.
struct Node {
    /// This containerd's socket (on the host, under the repo).
    runtime_socket: PathBuf,
    /// The stand-in for `/run/pleg`, and the pod's log directory.
    dir: pleg_testkit::temp::TempDir,
    health_port: u16,
}

impl Node {
    fn new() -> Node {
        let endpoint = endpoint();
        let runtime_socket = PathBuf::from(endpoint.strip_prefix("unix://").unwrap_or(&endpoint));
        let dir = pleg_testkit::temp::dir("pod");
        for sub in ["run-pleg", "logs"] {
            std::fs::create_dir(dir.path().join(sub)).expect("a directory in the temp dir");
        }
        Node {
            runtime_socket,
            dir,
            health_port: free_port(),
        }
    }

    fn pleg_run(&self) -> PathBuf {
        self.dir.path().join("run-pleg")
    }

    fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// Where a `hostPath` of the manifest is on this node.
    fn host_path(&self, template: &Template, mount: &HostMount) -> PathBuf {
        let endpoint = flag(&template.args, "runtime-endpoint").expect("--runtime-endpoint=");
        let grpc = flag(&template.args, "grpc-socket").expect("--grpc-socket=");
        if Path::new(endpoint.trim_start_matches("unix://")) == mount.container_path {
            assert_eq!(mount.host_path_type, "Socket", "volume {}", mount.volume);
            self.runtime_socket.clone()
        } else if Path::new(grpc).parent() == Some(&mount.container_path) {
            self.pleg_run()
        } else {
            panic!(
                "{MANIFEST}: the test has no stand-in for hostPath {} (volume {}); add one",
                mount.host_path.display(),
                mount.volume
            )
        }
    }

    /// The manifest's args with the health port remapped.
    fn args(&self, template: &Template) -> Vec<String> {
        template
            .args
            .iter()
            .map(|arg| match arg.strip_prefix("--health-addr=") {
                Some(addr) => {
                    let (host, _) = addr.rsplit_once(':').expect("--health-addr=host:port");
                    assert_eq!(host, "127.0.0.1", "the probes' host, the node's loopback");
                    format!("--health-addr={host}:{}", self.health_port)
                }
                None => arg.clone(),
            })
            .collect()
    }

    /// The gRPC socket as the host sees it.
    fn grpc_socket(&self, template: &Template) -> PathBuf {
        let grpc = flag(&template.args, "grpc-socket").expect("--grpc-socket=");
        self.pleg_run()
            .join(Path::new(grpc).file_name().expect("a socket file name"))
    }

    /// What the daemon wrote to its stdout and stderr (the CRI log), for
    /// failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(self.logs().join("pleg.log"))
            .unwrap_or_else(|e| format!("(no log: {e})"))
    }
}

// --- the image ---

/// Builds the image from the binary under test and imports it into the
/// containerd under test, under `tag`.
fn build_image(node: &Node, tag: &str) {
    let tar = node.dir.path().join("pleg.tar");
    let output = Command::new(repo().join("scripts/pleg-image.sh"))
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_pleg"))
        // A debug build's debug info is most of its size; the image needs none.
        .arg("--strip")
        .args(["--tag", tag])
        .arg("--output")
        .arg(&tar)
        .arg("--import")
        .arg(&node.runtime_socket)
        .output()
        .expect("run scripts/pleg-image.sh");
    assert!(
        output.status.success(),
        "scripts/pleg-image.sh: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), tag);
    // What it built (its size) and imported, in the test's output.
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
}

/// Removes the image, with the ID reference containerd's CRI plugin gave it.
fn remove_image(socket: &Path, tag: &str) {
    let _ = Command::new(repo().join("scripts/pleg-image.sh"))
        .arg("--remove")
        .arg(socket)
        .args(["--tag", tag])
        .output();
}

/// Takes down what the test made, when it does not get to do so itself (a
/// failed assertion): the sandboxes (and with them their containers) and the
/// image. Drop cannot await, so it runs on a thread of its own.
struct Teardown {
    socket: PathBuf,
    sandboxes: Vec<String>,
    image: Option<String>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        let sandboxes = std::mem::take(&mut self.sandboxes);
        let endpoint = endpoint();
        let _ = (!sandboxes.is_empty()).then(|| {
            std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async {
                    let Ok(driver) = Driver::new(&endpoint) else {
                        return;
                    };
                    for id in sandboxes {
                        let _ = driver.stop_pod(&id).await;
                        let _ = driver.remove_pod(&id).await;
                    }
                });
            })
            .join()
        });
        if let Some(tag) = self.image.take() {
            remove_image(&self.socket, &tag);
        }
    }
}

// --- the process, seen from the host ---

/// The host pid of the process running exactly `args` after its program.
fn pid_running(args: &[String]) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let mut words = cmdline
                .split(|b| *b == 0)
                .filter(|w| !w.is_empty())
                .map(|w| String::from_utf8_lossy(w).into_owned());
            words.next()?;
            (words.collect::<Vec<_>>() == args).then_some(pid)
        })
}

/// Whether the process's root filesystem is mounted read-only, in its own
/// mount namespace (`/proc/<pid>/mountinfo`: mount point, field 5; its
/// options, field 6).
fn root_is_readonly(pid: u32) -> bool {
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/mountinfo: {e}"));
    let root = mountinfo
        .lines()
        .rev() // the last mount on / is the one the process sees
        .find_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            (fields.get(4) == Some(&"/")).then(|| fields[5].to_string())
        })
        .unwrap_or_else(|| panic!("no / in /proc/{pid}/mountinfo"));
    root.split(',').any(|o| o == "ro")
}

/// A field of `/proc/<pid>/status`, such as `NoNewPrivs` or `CapEff`.
fn proc_status(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"))
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

// --- the kubelet's side ---

/// The status of `GET path` on the health port, or the error.
async fn probe_status(node: &Node, path: &str) -> Result<u16, String> {
    pleg_testkit::http::get(format!("127.0.0.1:{}", node.health_port), path)
        .await
        .map(|r| r.status)
        .map_err(|e| e.to_string())
}

/// Reads `stream` until `done` holds for an event; returns the events.
async fn read_until(
    stream: &mut WatchStream,
    what: &str,
    mut done: impl FnMut(&pleg::PodLifecycleEvent) -> bool,
) -> Vec<String> {
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            match stream.next().await {
                Some(Ok(Delivery::Event(e))) => {
                    got.push(e.to_string());
                    if done(&e) {
                        return;
                    }
                }
                Some(Ok(other)) => got.push(format!("{other:?}")),
                Some(Err(e)) => panic!("the Watch failed waiting for {what}: {e}; came: {got:?}"),
                None => panic!("the Watch ended waiting for {what}; came: {got:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}; came: {got:?}"));
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pleg_run_as_the_daemonset_pod_is_probed_ready_and_watches_the_containerd_running_it() {
    init_logs();
    let template = Template::read();
    let node = Node::new();
    let name = unique("pleg");
    let tag = format!("docker.io/library/pleg:test-{name}");
    let mut teardown = Teardown {
        socket: node.runtime_socket.clone(),
        sandboxes: Vec::new(),
        image: Some(tag.clone()),
    };
    let build = {
        let started = tokio::time::Instant::now();
        tokio::task::block_in_place(|| build_image(&node, &tag));
        started.elapsed()
    };

    // The pod, as the kubelet would make it from the manifest.
    let driver = driver();
    let mut pod = PodSpec::new(&name, &template.namespace, format!("uid-{name}"))
        .with_log_directory(node.logs());
    for (key, value) in &template.labels {
        pod = pod.with_label(key, value);
    }
    let sandbox = driver
        .run_pod(&pod)
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}"));
    teardown.sandboxes.push(sandbox.clone());
    let mut spec = ContainerSpec::new(&template.container, &tag, Vec::<String>::new())
        .with_args(node.args(&template))
        .with_readonly_rootfs(template.readonly_rootfs)
        .with_no_new_privileges(template.no_new_privileges)
        .with_drop_capabilities(template.drop_capabilities.clone())
        .with_log_path("pleg.log");
    for (key, value) in &template.env {
        spec = spec.with_env(key, value);
    }
    for mount in &template.mounts {
        spec = spec.with_mount(node.host_path(&template, mount), &mount.container_path);
    }
    let container = driver
        .create_container(&sandbox, &pod, &spec)
        .await
        .unwrap_or_else(|e| panic!("CreateContainer {}: {e}", template.container));
    driver
        .start_container(&container)
        .await
        .unwrap_or_else(|e| panic!("StartContainer {}: {e}\n{}", template.container, node.log()));
    let started = tokio::time::Instant::now();

    // The probes, from the host, until both pass. The kubelet restarts a
    // container whose liveness probe fails `failureThreshold` times in a
    // row, `periodSeconds` apart: it must be live well within that.
    let (live, ready) = (&template.liveness, &template.readiness);
    for probe in [live, ready] {
        assert_eq!(probe.host, "127.0.0.1", "{probe:?}");
        assert_eq!(
            Some(probe.port),
            flag(&template.args, "health-addr")
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok()),
            "{probe:?} is on --health-addr's port"
        );
    }
    let deadline = started + WAIT;
    let last = loop {
        let last = (
            probe_status(&node, &live.path).await,
            probe_status(&node, &ready.path).await,
        );
        if last == (Ok(200), Ok(200)) || tokio::time::Instant::now() >= deadline {
            break last;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    let status = driver.container_status(&container).await;
    assert!(
        last == (Ok(200), Ok(200)),
        "{} and {} not both 200 after {WAIT:?}: last {last:?}; container {status:?}; its log:\n{}",
        live.path,
        ready.path,
        node.log()
    );
    let to_ready = started.elapsed();
    let liveness_gives_up = live.period * live.failure_threshold;
    assert!(
        to_ready < liveness_gives_up,
        "live and ready after {to_ready:?}: the kubelet gives up after {liveness_gives_up:?}"
    );
    assert_eq!(probe_status(&node, "/healthz").await, Ok(200), "/healthz");
    let status = status.expect("ContainerStatus");
    assert_eq!(
        (status.state, status.attempt),
        (ContainerState::Running, 0),
        "{status:?}"
    );

    // The securityContext, carried out: seen from the host, in the process.
    let args = node.args(&template);
    let pid = pid_running(&args).unwrap_or_else(|| panic!("no process runs pleg {args:?}"));
    assert_eq!(
        root_is_readonly(pid),
        template.readonly_rootfs,
        "readOnlyRootFilesystem"
    );
    assert_eq!(
        proc_status(pid, "NoNewPrivs") == "1",
        template.no_new_privileges,
        "allowPrivilegeEscalation"
    );
    if template.drop_capabilities.iter().any(|c| c == "ALL") {
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(
                u64::from_str_radix(&proc_status(pid, set), 16),
                Ok(0),
                "capabilities.drop [ALL]: {set}"
            );
        }
    }
    // In evented mode (as the manifest asks) the daemon follows the
    // runtime's event stream: the Watch below gets the events from it.
    if flag(&template.args, "mode") == Some("evented") {
        eventually_async(
            "the daemon streaming the runtime's events",
            WAIT,
            || async {
                pleg_testkit::http::get(format!("127.0.0.1:{}", node.health_port), "/metrics")
                    .await
                    .ok()
                    .filter(|r| r.body.contains("pleg_stream_state{state=\"streaming\"} 1"))
            },
        )
        .await;
    }

    // A client on the node, through the socket in the shared directory: the
    // daemon sees the containerd it runs in, its own pod included.
    let socket = node.grpc_socket(&template);
    let mut client = Client::connect(&socket)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
    let uid = PodUid::new(&pod.uid);
    let own = eventually_async("the daemon listing its own pod, running", WAIT, || {
        let mut client = client.clone();
        let uid = uid.clone();
        let (sandbox, container, namespace) = (&sandbox, &container, &template.namespace);
        async move {
            let pods = client.list_pods(Some(namespace)).await.expect("ListPods");
            pods.into_iter().find(|p| {
                p.status.meta.uid == uid
                    && p.status.has_ready_sandbox()
                    && p.status.sandboxes.iter().any(|s| s.id.as_str() == sandbox)
                    && p.status
                        .containers
                        .iter()
                        .any(|c| c.id.as_str() == container && c.state == ContainerState::Running)
            })
        }
    })
    .await;
    assert_eq!(own.status.meta.name, name);
    assert_eq!(own.status.meta.namespace, template.namespace);
    for (key, value) in &template.labels {
        assert_eq!(own.status.meta.labels.get(key), Some(value), "label {key}");
    }
    let own_container = own
        .status
        .container_by_name(&template.container)
        .expect("its container");
    assert_eq!(own_container.image, tag, "{own_container:?}");

    // A pod started afterwards comes on a Watch as the runtime starts it.
    let watched = PlannedPod::new("watched");
    let mut stream = client
        .watch(
            &Filter::all().with_pod_uids([PodUid::new(watched.uid())]),
            0,
        )
        .await
        .expect("Watch");
    let watched = watched.run(&driver).await;
    teardown.sandboxes.push(watched.sandbox_id.clone());
    let app = watched
        .start(&driver, "app", 0, until_triggered("never", 0))
        .await;
    let got = read_until(&mut stream, "the watched pod's app started", |e| {
        is(e, EventType::ContainerStarted, &app)
    })
    .await;
    assert!(
        got.iter().all(|e| !e.contains("Resync")),
        "no gap on the way: {got:?}"
    );
    drop(stream);
    watched.remove(&driver).await;
    teardown.sandboxes.retain(|s| *s != watched.sandbox_id);

    // Stopped as the kubelet stops it: SIGTERM, then SIGKILL after the
    // grace period. It exits of itself, 0, and takes its socket with it.
    let stopping = tokio::time::Instant::now();
    driver
        .stop_container(&container, template.grace)
        .await
        .expect("StopContainer");
    let stopped = driver
        .container_status(&container)
        .await
        .expect("ContainerStatus");
    assert_eq!(
        (stopped.state, stopped.exit_code),
        (ContainerState::Exited, Some(0)),
        "stopped within the grace period, after {:?}: {stopped:?}; its log:\n{}",
        stopping.elapsed(),
        node.log()
    );
    assert!(
        !socket.exists(),
        "the daemon removed {} on exit",
        socket.display()
    );
    // The daemon's output, in the CRI log format (`<time> <stream> <tag>
    // <line>`): with --log-format=json, JSON lines.
    let log = node.log();
    if flag(&template.args, "log-format") == Some("json") {
        for line in log.lines() {
            let text = line.splitn(4, ' ').nth(3).unwrap_or_default();
            assert!(
                serde_json::from_str::<serde_json::Value>(text).is_ok(),
                "a log line that is not JSON: {line}"
            );
        }
    }
    assert!(!log.is_empty(), "the daemon logged nothing");
    driver.stop_pod(&sandbox).await.expect("StopPodSandbox");
    driver.remove_pod(&sandbox).await.expect("RemovePodSandbox");
    teardown.sandboxes.clear();
    drop(teardown);
    eprintln!(
        "image built and imported in {build:?}; live and ready {to_ready:?} after its start; \
         stopped in {:?}; {} log lines",
        stopping.elapsed(),
        log.lines().count()
    );
}
