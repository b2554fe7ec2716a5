//! A scripted, deterministic runtime for tests, examples and benchmarks.
//!
//! It answers listings from a standing set of pods that the test replaces at
//! will, and statuses derived from that set (plus any IPs the test gave). On
//! top of that a test can queue one-shot answers (errors, particular
//! statuses), make every call of a kind fail, delay calls (on tokio time, so
//! paused-time tests stay exact), and give raw CRI state numbers that go
//! through the same decoding as the real adapter.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use std::sync::atomic::{AtomicU64, Ordering};

use super::{
    BoxFuture, Call, ContainerEvent, CriMethod, Error, EventStream, Operation, PodControl, Result,
    Runtime, RuntimeStats,
};
use crate::model::{ContainerId, Listing, Pod, PodStatus, PodUid};

#[derive(Debug, Default)]
struct Script {
    pods: Vec<Pod>,
    raw_states: HashMap<ContainerId, i32>,
    ips: HashMap<PodUid, Vec<String>>,
    list_answers: VecDeque<String>,
    list_failure: Option<String>,
    list_delay: Duration,
    status_answers: HashMap<PodUid, VecDeque<std::result::Result<PodStatus, String>>>,
    status_failures: HashMap<PodUid, String>,
    status_delay: Duration,
    status_calls: HashMap<PodUid, u64>,
}

/// The scripted runtime. Cheap to share: wrap it in an `Arc` and keep a handle
/// to script it while the generator runs.
#[derive(Debug, Default)]
pub struct FakeRuntime {
    script: Mutex<Script>,
    events: Mutex<EventScript>,
    stats: RuntimeStats,
    list_calls: AtomicU64,
    probe_calls: AtomicU64,
    stopped: Mutex<Vec<ContainerId>>,
    removed: Mutex<Vec<ContainerId>>,
}

/// The scripted event stream.
#[derive(Debug, Default)]
struct EventScript {
    /// Open streams.
    streams: Vec<tokio::sync::mpsc::UnboundedSender<Result<ContainerEvent>>>,
    /// Answers to the next attempts to open a stream, before success.
    open_failures: VecDeque<Error>,
    /// Every attempt fails with this (until cleared).
    standing_failure: Option<Error>,
    /// When each attempt to open a stream was made.
    opens: Vec<tokio::time::Instant>,
}

impl FakeRuntime {
    /// A runtime with no pods.
    pub fn new() -> Arc<Self> {
        Arc::new(FakeRuntime::default())
    }

    /// A runtime listing these pods.
    pub fn with_pods(pods: Vec<Pod>) -> Arc<Self> {
        let fake = FakeRuntime::default();
        fake.script.lock().pods = pods;
        Arc::new(fake)
    }

    /// Replaces the pods every following listing returns.
    pub fn set_pods(&self, pods: Vec<Pod>) {
        self.script.lock().pods = pods;
    }

    /// Overrides the state of a container or sandbox with a raw CRI number,
    /// decoded at listing time like the real adapter does (unknown numbers
    /// become `Unknown` and are counted).
    pub fn set_raw_state(&self, id: impl Into<ContainerId>, raw: i32) {
        self.script.lock().raw_states.insert(id.into(), raw);
    }

    /// Gives a pod IPs in the statuses derived from the listing.
    pub fn set_ips(&self, uid: impl Into<PodUid>, ips: Vec<String>) {
        self.script.lock().ips.insert(uid.into(), ips);
    }

    /// Makes the next listing fail with `message` (one shot, queued).
    pub fn push_list_error(&self, message: impl Into<String>) {
        self.script.lock().list_answers.push_back(message.into());
    }

    /// Makes every listing fail with `message` until cleared with `None`.
    pub fn set_list_failure(&self, message: Option<String>) {
        self.script.lock().list_failure = message;
    }

    /// Delays every listing.
    pub fn set_list_delay(&self, delay: Duration) {
        self.script.lock().list_delay = delay;
    }

    /// Queues one answer to the pod's next status call.
    pub fn push_status(
        &self,
        uid: impl Into<PodUid>,
        answer: std::result::Result<PodStatus, String>,
    ) {
        self.script
            .lock()
            .status_answers
            .entry(uid.into())
            .or_default()
            .push_back(answer);
    }

    /// Makes every status call of the pod fail until cleared with `None`.
    pub fn set_status_failure(&self, uid: impl Into<PodUid>, message: Option<String>) {
        let mut script = self.script.lock();
        let uid = uid.into();
        match message {
            Some(m) => {
                script.status_failures.insert(uid, m);
            }
            None => {
                script.status_failures.remove(&uid);
            }
        }
    }

    /// Delays every status call.
    pub fn set_status_delay(&self, delay: Duration) {
        self.script.lock().status_delay = delay;
    }

    /// Probes answered or attempted so far.
    pub fn probe_calls(&self) -> u64 {
        self.probe_calls.load(Ordering::Relaxed)
    }

    /// Listings answered or attempted so far.
    pub fn list_calls(&self) -> u64 {
        self.list_calls.load(Ordering::Relaxed)
    }

    /// Status calls for one pod so far.
    pub fn status_calls(&self, uid: &PodUid) -> u64 {
        self.script
            .lock()
            .status_calls
            .get(uid)
            .copied()
            .unwrap_or(0)
    }

    /// Status calls for all pods so far.
    pub fn total_status_calls(&self) -> u64 {
        self.script.lock().status_calls.values().sum()
    }

    /// Sandboxes stopped through [`PodControl`], in order.
    pub fn stopped_pods(&self) -> Vec<ContainerId> {
        self.stopped.lock().clone()
    }

    /// Sandboxes removed through [`PodControl`], in order; the pod they
    /// belong to leaves the listing.
    pub fn removed_pods(&self) -> Vec<ContainerId> {
        self.removed.lock().clone()
    }

    fn answer_list(&self) -> (Duration, Result<Listing>) {
        self.list_calls.fetch_add(1, Ordering::Relaxed);
        let mut script = self.script.lock();
        let delay = script.list_delay;
        if let Some(message) = script.list_answers.pop_front() {
            return (delay, Err(failed(Operation::ListPods, message)));
        }
        if let Some(message) = &script.list_failure {
            return (delay, Err(failed(Operation::ListPods, message.clone())));
        }
        let mut pods = script.pods.clone();
        if !script.raw_states.is_empty() {
            for pod in &mut pods {
                for (entries, sandbox) in [(&mut pod.sandboxes, true), (&mut pod.containers, false)]
                {
                    for c in entries.iter_mut() {
                        if let Some(&raw) = script.raw_states.get(&c.id) {
                            c.state = if sandbox {
                                self.stats.decode_sandbox_state(raw)
                            } else {
                                self.stats.decode_container_state(raw)
                            };
                        }
                    }
                }
            }
        }
        (delay, Ok(Listing::new(pods)))
    }

    fn answer_status(&self, pod: &Pod) -> (Duration, Result<PodStatus>) {
        let mut script = self.script.lock();
        let uid = pod.uid().clone();
        *script.status_calls.entry(uid.clone()).or_default() += 1;
        let delay = script.status_delay;
        if let Some(answer) = script
            .status_answers
            .get_mut(&uid)
            .and_then(std::collections::VecDeque::pop_front)
        {
            return (delay, answer.map_err(|m| failed(Operation::PodStatus, m)));
        }
        if let Some(message) = script.status_failures.get(&uid) {
            return (delay, Err(failed(Operation::PodStatus, message.clone())));
        }
        let mut status = match script.pods.iter().find(|p| p.uid() == &uid) {
            Some(current) => PodStatus::from_pod(current),
            None => PodStatus::from_pod(pod),
        };
        if let Some(ips) = script.ips.get(&uid) {
            status.ips.clone_from(ips);
        }
        (delay, Ok(status))
    }
}

fn failed(call: impl Into<Call>, message: String) -> Error {
    Error::failed(call, message)
}

async fn after<T>(delay: Duration, answer: T) -> T {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    answer
}

impl Runtime for FakeRuntime {
    fn list_pods(&self) -> BoxFuture<'_, Result<Listing>> {
        let (delay, answer) = self.answer_list();
        Box::pin(after(delay, answer))
    }

    /// Answers like a listing would (same delay, same standing failure),
    /// without taking a scripted listing error.
    fn probe(&self) -> BoxFuture<'_, Result<()>> {
        self.probe_calls.fetch_add(1, Ordering::Relaxed);
        let script = self.script.lock();
        let delay = script.list_delay;
        let answer = match &script.list_failure {
            Some(message) => Err(failed(Operation::Probe, message.clone())),
            None => Ok(()),
        };
        drop(script);
        Box::pin(after(delay, answer))
    }

    fn pod_status<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Result<PodStatus>> {
        let (delay, answer) = self.answer_status(pod);
        Box::pin(after(delay, answer))
    }

    fn stats(&self) -> &RuntimeStats {
        &self.stats
    }

    fn container_events(&self) -> BoxFuture<'_, Result<EventStream>> {
        Box::pin(async move {
            let mut script = self.events.lock();
            script.opens.push(tokio::time::Instant::now());
            if let Some(error) = script.open_failures.pop_front() {
                return Err(error);
            }
            if let Some(error) = &script.standing_failure {
                return Err(error.clone());
            }
            let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
            script.streams.push(sender);
            Ok(Box::pin(ChannelStream(receiver)) as EventStream)
        })
    }
}

impl PodControl for FakeRuntime {
    fn stop_pod<'a>(&'a self, sandbox_id: &'a ContainerId) -> BoxFuture<'a, Result<()>> {
        self.stopped.lock().push(sandbox_id.clone());
        Box::pin(async { Ok(()) })
    }

    fn remove_pod<'a>(&'a self, sandbox_id: &'a ContainerId) -> BoxFuture<'a, Result<()>> {
        self.removed.lock().push(sandbox_id.clone());
        self.script
            .lock()
            .pods
            .retain(|p| !p.sandboxes.iter().any(|s| &s.id == sandbox_id));
        Box::pin(async { Ok(()) })
    }
}

/// A stream fed by the test.
struct ChannelStream(tokio::sync::mpsc::UnboundedReceiver<Result<ContainerEvent>>);

impl futures_core::Stream for ChannelStream {
    type Item = Result<ContainerEvent>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// Scripting the event stream.
impl FakeRuntime {
    /// Sends an event to every open stream; returns how many took it.
    // The test hands the event over, as a runtime would.
    #[allow(clippy::needless_pass_by_value)]
    pub fn push_event(&self, event: ContainerEvent) -> usize {
        let mut script = self.events.lock();
        script.streams.retain(|s| !s.is_closed());
        script
            .streams
            .iter()
            .filter(|s| s.send(Ok(event.clone())).is_ok())
            .count()
    }

    /// Ends every open stream, with an error first if given.
    // The test hands the message over, as a runtime would.
    #[allow(clippy::needless_pass_by_value)]
    pub fn end_event_streams(&self, error: Option<String>) {
        let mut script = self.events.lock();
        for stream in script.streams.drain(..) {
            if let Some(message) = &error {
                let _ = stream.send(Err(failed(CriMethod::GetContainerEvents, message.clone())));
            }
        }
    }

    /// Makes the next `times` attempts to open a stream fail.
    pub fn fail_event_opens(&self, times: usize, message: impl Into<String>) {
        let message = message.into();
        let mut script = self.events.lock();
        for _ in 0..times {
            script
                .open_failures
                .push_back(failed(CriMethod::GetContainerEvents, message.clone()));
        }
    }

    /// Makes every attempt to open a stream fail (`None`: stop doing so).
    /// With `unimplemented`, the failure is `Unimplemented`, like containerd 1.6.
    pub fn set_event_failure(&self, message: Option<String>, unimplemented: bool) {
        self.events.lock().standing_failure = message.map(|message| {
            if unimplemented {
                Error::Unimplemented {
                    call: Call::Cri(CriMethod::GetContainerEvents),
                    message,
                }
            } else {
                failed(CriMethod::GetContainerEvents, message)
            }
        });
    }

    /// When each attempt to open a stream was made (tokio time).
    pub fn event_opens(&self) -> Vec<tokio::time::Instant> {
        self.events.lock().opens.clone()
    }

    /// Streams open now.
    pub fn open_event_streams(&self) -> usize {
        let mut script = self.events.lock();
        script.streams.retain(|s| !s.is_closed());
        script.streams.len()
    }
}

/// `count` synthetic pods shaped like a busy node's: each has one ready
/// sandbox and three running containers, with UUID-like pod UIDs and 64-hex
/// runtime IDs. Every call allocates fresh strings, so two calls give equal
/// listings that share no memory, as two real listings would.
pub fn synthetic_pods(count: usize) -> Vec<Pod> {
    use crate::model::{Container, ContainerState, PodMeta};
    (0..count)
        .map(|i| {
            let uid = format!("{i:08x}-0000-4000-8000-{i:012x}");
            let mut pod = Pod::new(
                PodMeta::new(uid.as_str(), format!("pod-{i}"), "bench")
                    .with_label("app", format!("app-{}", i % 50)),
            )
            .with_sandbox(Container::new(
                runtime_id(i, 0),
                format!("pod-{i}"),
                ContainerState::Running,
            ));
            for c in 1..=3 {
                pod = pod.with_container(Container::new(
                    runtime_id(i, c),
                    format!("container-{c}"),
                    ContainerState::Running,
                ));
            }
            pod
        })
        .collect()
}

/// A deterministic 64-hex-digit runtime ID for entry `entry` of pod `pod`.
pub fn runtime_id(pod: usize, entry: usize) -> String {
    // Seeded by the entry, so the same entry always gets the same ID; the
    // generator spreads the bits so that IDs look like a runtime's.
    let mut rng = fastrand::Rng::with_seed((pod as u64) << 8 | entry as u64);
    let mut id = String::with_capacity(64);
    for _ in 0..4 {
        let _ = write!(id, "{:016x}", rng.u64(..));
    }
    id
}

/// A runtime that answers every listing with one prepared [`Listing`] (a
/// reference-count bump) and every status from the listing entry. Benchmarks
/// and allocation tests use it to leave the runtime's own cost out.
#[derive(Debug)]
pub struct FixedRuntime {
    listing: Listing,
    stats: RuntimeStats,
}

impl FixedRuntime {
    /// A runtime that always lists `listing`.
    pub fn new(listing: Listing) -> Arc<Self> {
        Arc::new(FixedRuntime {
            listing,
            stats: RuntimeStats::default(),
        })
    }
}

impl Runtime for FixedRuntime {
    fn list_pods(&self) -> BoxFuture<'_, Result<Listing>> {
        let listing = self.listing.clone();
        Box::pin(async move { Ok(listing) })
    }

    fn pod_status<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Result<PodStatus>> {
        Box::pin(async move { Ok(PodStatus::from_pod(pod)) })
    }

    fn stats(&self) -> &RuntimeStats {
        &self.stats
    }
}
