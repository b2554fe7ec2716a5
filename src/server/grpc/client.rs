//! The client of a `pleg run` daemon, for `pleg watch --daemon` and
//! `pleg pods --daemon`: it reads the API back into the library's types.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use super::convert::{
    MonitorItem, delivery_from_pb, health_from_pb, listing_from_pb, monitor_update_from_pb,
    selection_request, watch_request,
};
use super::{DEFAULT_PAGE_SIZE, Health, MAX_MESSAGE_SIZE, PodListing, pb};
use crate::backoff::Backoff;
use crate::hub::{Delivery, Epoch, Filter, ResumeToken, ResyncReason};
use crate::model::PodUid;

/// How long the client waits to connect, and for each unary call.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

// --- the client ---

/// Why talking to a pleg daemon failed. Every variant names the socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing exists at the socket path (is the daemon running?).
    #[error("pleg daemon socket {}: no such socket (is `pleg run` running?)", socket.display())]
    NoSocket {
        /// The socket path.
        socket: PathBuf,
    },
    /// Something other than a socket exists at the path.
    #[error("pleg daemon socket {}: exists but is not a unix socket", socket.display())]
    NotASocket {
        /// The path.
        socket: PathBuf,
    },
    /// The path is not valid UTF-8, which the gRPC transport needs.
    #[error("pleg daemon socket {}: the path is not valid UTF-8", socket.display())]
    InvalidPath {
        /// The path.
        socket: PathBuf,
    },
    /// The socket exists but the connection failed (nobody listens, no
    /// permission, ...).
    #[error("pleg daemon socket {}: cannot connect: {message}", socket.display())]
    Unreachable {
        /// The socket path.
        socket: PathBuf,
        /// What the connection attempt said.
        message: String,
    },
    /// Something answers, but not as a pleg daemon (`pleg.v1.Pleg/Health`).
    #[error("pleg daemon socket {}: not a pleg daemon: expected an answer to pleg.v1.Pleg/Health, got {message}", socket.display())]
    NotPleg {
        /// The socket path.
        socket: PathBuf,
        /// What came back.
        message: String,
    },
    /// A call failed.
    #[error("pleg daemon at {}: {call} failed: {code:?}: {message}", socket.display())]
    Rpc {
        /// The socket path.
        socket: PathBuf,
        /// The call, for example `Watch`.
        call: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The daemon's (or the transport's) message.
        message: String,
    },
    /// The request cannot be expressed on the wire.
    #[error("pleg daemon at {}: invalid {call} request: {reason}", socket.display())]
    InvalidRequest {
        /// The socket path.
        socket: PathBuf,
        /// The call.
        call: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The daemon sent something this client cannot read (a newer daemon?).
    #[error("pleg daemon at {}: {call}: unreadable answer: {reason}", socket.display())]
    Protocol {
        /// The socket path.
        socket: PathBuf,
        /// The call.
        call: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// A client of a `pleg run` daemon, for `pleg watch --daemon` and
/// `pleg pods --daemon`. Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    inner: pb::pleg_client::PlegClient<Channel>,
}

impl Client {
    /// Connects to the daemon at `socket` and checks that it is one (it asks
    /// `Health`). Fails naming the socket when it is missing, is not a
    /// socket, nobody listens, or what listens is not a pleg daemon.
    ///
    /// # Errors
    /// A [`ClientError`] naming the socket: missing, not a socket, nobody listening, or not a pleg daemon.
    pub async fn connect(socket: &Path) -> Result<Client, ClientError> {
        let socket_buf = socket.to_path_buf();
        match std::fs::metadata(socket) {
            Ok(meta) if meta.file_type().is_socket() => {}
            Ok(_) => return Err(ClientError::NotASocket { socket: socket_buf }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ClientError::NoSocket { socket: socket_buf });
            }
            Err(e) => {
                return Err(ClientError::Unreachable {
                    socket: socket_buf,
                    message: e.to_string(),
                });
            }
        }
        let text = socket.to_str().ok_or_else(|| ClientError::InvalidPath {
            socket: socket_buf.clone(),
        })?;
        let channel = Endpoint::from_shared(format!("unix://{text}"))
            .map_err(|e| ClientError::InvalidPath {
                socket: PathBuf::from(format!("{text} ({e})")),
            })?
            .connect_timeout(CLIENT_TIMEOUT)
            .connect()
            .await
            .map_err(|e| ClientError::Unreachable {
                socket: socket_buf.clone(),
                message: crate::error::chain(&e),
            })?;
        let mut client = Client {
            socket: socket_buf,
            // What the daemon may send (an unpaged ListPods), not tonic's 4 MiB.
            inner: pb::pleg_client::PlegClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_SIZE),
        };
        if let Err(status) = client.inner.health(unary(pb::HealthRequest {})).await {
            return Err(ClientError::NotPleg {
                socket: client.socket,
                message: format!("{:?}: {}", status.code(), status.message()),
            });
        }
        Ok(client)
    }

    /// The daemon's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Subscribes to the daemon's events that pass `filter`, with a queue of
    /// `capacity` events on the daemon's side (0: the default, 1000; at most
    /// [`MAX_CAPACITY`](super::MAX_CAPACITY), and the daemon's
    /// `--grpc-max-capacity`). Past the daemon's `--grpc-max-watches` the call
    /// fails with `ResourceExhausted`. The stream yields the same [`Delivery`] items an
    /// embedded subscription does, and ends when the daemon shuts down.
    ///
    /// A filter that selects nothing (an empty `pod_uids` or `kinds` set, an
    /// empty namespace) cannot be sent and is refused.
    ///
    /// # Errors
    /// A filter the wire cannot express, or the daemon's refusal.
    pub async fn watch(
        &mut self,
        filter: &Filter,
        capacity: usize,
    ) -> Result<WatchStream, ClientError> {
        self.watch_from(filter, capacity, &WatchFrom::default())
            .await
    }

    /// As [`watch`](Self::watch), resuming after a point of an earlier
    /// stream ([`WatchStream::resume_token`]) and with the initial state
    /// first, as `from` says. For a stream that reconnects by itself, see
    /// [`ResumingWatch`].
    ///
    /// # Errors
    /// A filter the wire cannot express, or the daemon's refusal (a resume
    /// point past the daemon's last item is `InvalidArgument`).
    pub async fn watch_from(
        &mut self,
        filter: &Filter,
        capacity: usize,
        from: &WatchFrom,
    ) -> Result<WatchStream, ClientError> {
        let mut request =
            watch_request(filter, capacity).map_err(|reason| ClientError::InvalidRequest {
                socket: self.socket.clone(),
                call: "Watch",
                reason,
            })?;
        request.initial_state = from.initial_state;
        if let Some(token) = &from.resume {
            request.epoch = token.epoch.to_string();
            request.since = token.seq;
        }
        let response = self
            .inner
            .watch(request)
            .await
            .map_err(|status| self.rpc_error("Watch", &status))?;
        let header = |name: &str| {
            response
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        // A daemon older than resuming sends neither header.
        let epoch = header(super::EPOCH_HEADER).and_then(|e| Epoch::named(&e).ok());
        let last_seq = header(super::SEQ_HEADER)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok(WatchStream {
            socket: self.socket.clone(),
            events: response.into_inner(),
            epoch,
            last_seq,
        })
    }

    /// Monitors the recovery of the pods `filter` selects for at most
    /// `timeout`, in the daemon (its `Monitor` call): the stream yields
    /// progress, then the report, then ends.
    ///
    /// # Errors
    /// A filter the wire cannot express, or the daemon's refusal.
    pub async fn monitor(
        &mut self,
        filter: &Filter,
        timeout: Duration,
    ) -> Result<MonitorStream, ClientError> {
        self.start_monitor(filter, timeout, false).await
    }

    /// As [`monitor`](Self::monitor), but the daemon keeps the monitor
    /// running if the call ends early (a broken connection): the stream's
    /// [`MonitorStream::monitor_id`] names it, and
    /// [`attach_monitor`](Self::attach_monitor) follows it again.
    ///
    /// # Errors
    /// A filter the wire cannot express, or the daemon's refusal (past
    /// [`MAX_KEPT_MONITORS`](super::MAX_KEPT_MONITORS), `ResourceExhausted`).
    pub async fn monitor_kept(
        &mut self,
        filter: &Filter,
        timeout: Duration,
    ) -> Result<MonitorStream, ClientError> {
        self.start_monitor(filter, timeout, true).await
    }

    async fn start_monitor(
        &mut self,
        filter: &Filter,
        timeout: Duration,
        keep_on_disconnect: bool,
    ) -> Result<MonitorStream, ClientError> {
        let invalid = |reason| ClientError::InvalidRequest {
            socket: self.socket.clone(),
            call: "Monitor",
            reason,
        };
        let pods = selection_request(filter).map_err(invalid)?;
        let timeout_ms = u32::try_from(timeout.as_millis())
            .map_err(|_| invalid(format!("timeout {timeout:?} is too long")))?;
        self.call_monitor(pb::MonitorRequest {
            pods: Some(pods),
            timeout_ms,
            keep_on_disconnect,
            attach: String::new(),
        })
        .await
    }

    /// Follows a monitor the daemon kept ([`monitor_kept`](Self::monitor_kept)):
    /// its counts now, as they change, then its report.
    ///
    /// # Errors
    /// `NotFound` when the daemon has no such monitor (it restarted, or the
    /// report is older than [`KEPT_REPORT_FOR`](super::KEPT_REPORT_FOR)).
    pub async fn attach_monitor(&mut self, monitor_id: &str) -> Result<MonitorStream, ClientError> {
        self.call_monitor(pb::MonitorRequest {
            attach: monitor_id.to_string(),
            ..pb::MonitorRequest::default()
        })
        .await
    }

    async fn call_monitor(
        &mut self,
        request: pb::MonitorRequest,
    ) -> Result<MonitorStream, ClientError> {
        let updates = self
            .inner
            .monitor(request)
            .await
            .map_err(|status| self.rpc_error("Monitor", &status))?
            .into_inner();
        Ok(MonitorStream {
            socket: self.socket.clone(),
            updates,
            monitor_id: None,
        })
    }

    /// Every pod in the daemon's cache (only those in `namespace`, if
    /// given), sorted by namespace, name and UID, read in pages of
    /// [`DEFAULT_PAGE_SIZE`] (a daemon older than paging answers with every
    /// pod at once, which is read the same).
    ///
    /// # Errors
    /// A failed call, or an answer this client cannot read.
    pub async fn list_pods(
        &mut self,
        namespace: Option<&str>,
    ) -> Result<Vec<PodListing>, ClientError> {
        let mut pods = Vec::new();
        let mut token = String::new();
        loop {
            let (page, next) = self
                .list_pods_page(namespace, DEFAULT_PAGE_SIZE, &token)
                .await?;
            pods.extend(page);
            match next {
                None => return Ok(pods),
                Some(next) if next == token => {
                    return Err(self.protocol_error(
                        "ListPods",
                        "the daemon answered the same next_page_token twice".to_string(),
                    ));
                }
                Some(next) => token = next,
            }
        }
    }

    /// One page of the daemon's pods: at most `page_size` of them (0: all,
    /// in one answer) after the position `page_token` names (empty: from the
    /// first), and the token of the next page when there is one.
    ///
    /// # Errors
    /// A failed call (a bad token is `InvalidArgument`), or an answer this
    /// client cannot read.
    pub async fn list_pods_page(
        &mut self,
        namespace: Option<&str>,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<PodListing>, Option<String>), ClientError> {
        let request = pb::ListPodsRequest {
            namespace: namespace.unwrap_or_default().to_string(),
            page_size: u32::try_from(page_size).unwrap_or(u32::MAX),
            page_token: page_token.to_string(),
        };
        let answer = self
            .inner
            .list_pods(unary(request))
            .await
            .map_err(|status| self.rpc_error("ListPods", &status))?
            .into_inner();
        let pods = answer
            .pods
            .into_iter()
            .map(|p| listing_from_pb(p).map_err(|reason| self.protocol_error("ListPods", reason)))
            .collect::<Result<Vec<_>, _>>()?;
        let next = (!answer.next_page_token.is_empty()).then_some(answer.next_page_token);
        Ok((pods, next))
    }

    /// One pod from the daemon's cache; `None` when the daemon does not have
    /// it.
    ///
    /// # Errors
    /// A failed call, or an answer this client cannot read.
    pub async fn pod_status(&mut self, uid: &PodUid) -> Result<Option<PodListing>, ClientError> {
        let request = pb::GetPodStatusRequest {
            uid: uid.to_string(),
        };
        match self.inner.get_pod_status(unary(request)).await {
            Ok(answer) => listing_from_pb(answer.into_inner())
                .map(Some)
                .map_err(|reason| self.protocol_error("GetPodStatus", reason)),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(self.rpc_error("GetPodStatus", &status)),
        }
    }

    /// The daemon's health.
    ///
    /// # Errors
    /// A failed call, or an answer this client cannot read.
    pub async fn health(&mut self) -> Result<Health, ClientError> {
        let answer = self
            .inner
            .health(unary(pb::HealthRequest {}))
            .await
            .map_err(|status| self.rpc_error("Health", &status))?
            .into_inner();
        health_from_pb(answer).map_err(|reason| self.protocol_error("Health", reason))
    }

    fn rpc_error(&self, call: &'static str, status: &Status) -> ClientError {
        ClientError::Rpc {
            socket: self.socket.clone(),
            call,
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    fn protocol_error(&self, call: &'static str, reason: String) -> ClientError {
        ClientError::Protocol {
            socket: self.socket.clone(),
            call,
            reason,
        }
    }
}

/// A unary request with the client's deadline.
fn unary<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(CLIENT_TIMEOUT);
    request
}

/// The client side of a `Watch` call. Dropping it cancels the call, and the
/// daemon unsubscribes.
///
/// An item the client cannot read (from a newer daemon) comes out as an
/// `Err(ClientError::Protocol)` and the stream carries on; a broken
/// connection comes out as an `Err(ClientError::Rpc)` and ends it. `None`
/// means the daemon ended the stream cleanly (it shut down).
#[derive(Debug)]
pub struct WatchStream {
    socket: PathBuf,
    events: tonic::Streaming<pb::Event>,
    /// The daemon's run (`None` from a daemon older than resuming).
    epoch: Option<Epoch>,
    /// The last seq received, or where the stream started.
    last_seq: u64,
}

impl WatchStream {
    /// Waits for the next delivery.
    pub async fn next(&mut self) -> Option<Result<Delivery, ClientError>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The daemon's run, from the stream's `pleg-epoch` header (`None` from
    /// a daemon older than resuming).
    pub fn epoch(&self) -> Option<&Epoch> {
        self.epoch.as_ref()
    }

    /// Where this stream stands: resuming from it
    /// ([`WatchFrom::resume`]) gets everything after what it received.
    /// `None` from a daemon older than resuming.
    pub fn resume_token(&self) -> Option<ResumeToken> {
        self.epoch
            .as_ref()
            .map(|epoch| ResumeToken::new(epoch.clone(), self.last_seq))
    }
}

/// Where a watch starts: after a resume point, with the initial state, or
/// (the default) live from now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WatchFrom {
    /// Replay what followed this point, if the daemon still has it.
    pub resume: Option<ResumeToken>,
    /// Start with the current state of every selected pod, then `Synced`.
    pub initial_state: bool,
}

impl WatchFrom {
    /// Live from now.
    pub fn live() -> Self {
        WatchFrom::default()
    }

    /// Resumes after `token` (none: live).
    #[must_use]
    pub fn resume(mut self, token: Option<ResumeToken>) -> Self {
        self.resume = token;
        self
    }

    /// Asks for the initial state first.
    #[must_use]
    pub fn initial_state(mut self, initial: bool) -> Self {
        self.initial_state = initial;
        self
    }
}

impl Stream for WatchStream {
    type Item = Result<Delivery, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = match Pin::new(&mut this.events).poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        Poll::Ready(item.map(|answer| match answer {
            Ok(event) => {
                let delivery = delivery_from_pb(event).map_err(|reason| ClientError::Protocol {
                    socket: this.socket.clone(),
                    call: "Watch",
                    reason,
                })?;
                if let Some(seq) = delivery.seq() {
                    this.last_seq = this.last_seq.max(seq);
                }
                if let Delivery::Synced(token) = &delivery {
                    this.epoch = Some(token.epoch.clone());
                }
                Ok(delivery)
            }
            Err(status) => Err(ClientError::Rpc {
                socket: this.socket.clone(),
                call: "Watch",
                code: status.code(),
                message: status.message().to_string(),
            }),
        }))
    }
}

/// The client side of a `Monitor` call; dropping it cancels the monitor.
#[derive(Debug)]
pub struct MonitorStream {
    socket: PathBuf,
    updates: tonic::Streaming<pb::MonitorUpdate>,
    /// The monitor's ID, once a progress item named it (a kept monitor).
    monitor_id: Option<String>,
}

impl MonitorStream {
    /// The ID of a monitor the daemon keeps past the call, once the first
    /// item came (`None` for one that ends with its call).
    pub fn monitor_id(&self) -> Option<&str> {
        self.monitor_id.as_deref()
    }

    /// The next item; `None` once the daemon has sent the report and ended
    /// the stream.
    pub async fn next(&mut self) -> Option<Result<MonitorItem, ClientError>> {
        let item = self.updates.message().await;
        match item {
            Ok(None) => None,
            Ok(Some(update)) => {
                if let Some(pb::monitor_update::Item::Progress(p)) = &update.item
                    && !p.monitor_id.is_empty()
                {
                    self.monitor_id = Some(p.monitor_id.clone());
                }
                Some(
                    monitor_update_from_pb(update).map_err(|reason| ClientError::Protocol {
                        socket: self.socket.clone(),
                        call: "Monitor",
                        reason,
                    }),
                )
            }
            Err(status) => Some(Err(ClientError::Rpc {
                socket: self.socket.clone(),
                call: "Monitor",
                code: status.code(),
                message: status.message().to_string(),
            })),
        }
    }
}

/// A `Watch` that reconnects by itself: when the connection breaks or the
/// daemon restarts, it connects again (with backoff: 100 ms doubling to
/// 5 s, jittered) and resumes after the last item it handed out, so that
/// nothing is lost and nothing repeats at the seam. What cannot be resumed
/// comes out as a `Resync`: of reason `ReplayExpired` when the daemon's
/// ring no longer holds what followed, `EpochChanged` after a restart; with
/// [`WatchFrom::initial_state`], the current state follows it, then
/// `Synced`.
///
/// It ends (`None`) only when dropped, and yields an error only for what a
/// reconnection cannot mend: a request the daemon refuses, or something at
/// the socket that is not a pleg daemon.
#[derive(Debug)]
pub struct ResumingWatch {
    socket: PathBuf,
    filter: Filter,
    capacity: usize,
    initial_state: bool,
    stream: Option<WatchStream>,
    /// Where to resume from when the stream is gone.
    token: Option<ResumeToken>,
    backoff: Backoff,
    /// Whether it ever connected.
    connected: bool,
    reconnects: u64,
}

impl ResumingWatch {
    /// Watches the daemon at `socket` as [`Client::watch_from`] does,
    /// connecting on the first [`next`](Self::next) (and checking now that
    /// the filter can be sent).
    ///
    /// # Errors
    /// A filter the wire cannot express.
    pub fn new(
        socket: &Path,
        filter: &Filter,
        capacity: usize,
        from: WatchFrom,
    ) -> Result<ResumingWatch, ClientError> {
        watch_request(filter, capacity).map_err(|reason| ClientError::InvalidRequest {
            socket: socket.to_path_buf(),
            call: "Watch",
            reason,
        })?;
        Ok(ResumingWatch {
            socket: socket.to_path_buf(),
            filter: filter.clone(),
            capacity,
            initial_state: from.initial_state,
            stream: None,
            token: from.resume,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            connected: false,
            reconnects: 0,
        })
    }

    /// Connects and subscribes now, once, and fails if that fails: for a
    /// caller that wants to know the daemon answers before it goes on
    /// (later connections are retried for as long as it takes).
    ///
    /// # Errors
    /// Whatever the first connection or `Watch` call failed with.
    pub async fn start(&mut self) -> Result<(), ClientError> {
        if self.stream.is_none() {
            let stream = self.try_connect().await?;
            self.connected = true;
            self.token = stream.resume_token().or(self.token.take());
            self.stream = Some(stream);
        }
        Ok(())
    }

    /// The next delivery, reconnecting (and resuming) as often as it takes.
    pub async fn next(&mut self) -> Option<Result<Delivery, ClientError>> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                // Whether what was missed while away can be replayed.
                let resumable = !self.connected || self.token.is_some();
                match self.connect().await {
                    // A daemon older than resuming (no epoch to resume
                    // from): what happened while away is unknown, and says
                    // so rather than nothing.
                    Ok(()) if !resumable => {
                        return Some(Ok(Delivery::resync(ResyncReason::EpochChanged, 0, None)));
                    }
                    Ok(()) => continue,
                    Err(fatal) => return Some(Err(fatal)),
                }
            };
            match stream.next().await {
                Some(Ok(delivery)) => {
                    self.token = stream.resume_token().or(self.token.take());
                    return Some(Ok(delivery));
                }
                // One item this client cannot read; the stream goes on.
                Some(Err(e @ ClientError::Protocol { .. })) => return Some(Err(e)),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "the pleg daemon's Watch broke; reconnecting");
                    self.lost();
                }
                None => {
                    tracing::warn!(socket = %self.socket.display(), "the pleg daemon ended the Watch (shutting down?); reconnecting");
                    self.lost();
                }
            }
        }
    }

    fn lost(&mut self) {
        if let Some(stream) = self.stream.take() {
            self.token = stream.resume_token().or(self.token.take());
        }
    }

    /// Connects and subscribes, waiting out what a restarting daemon looks
    /// like; an error only for what waiting cannot mend.
    async fn connect(&mut self) -> Result<(), ClientError> {
        loop {
            match self.try_connect().await {
                Ok(stream) => {
                    if self.connected {
                        self.reconnects += 1;
                        tracing::info!(socket = %self.socket.display(), resumed_from = ?self.token.as_ref().map(ToString::to_string), "reconnected to the pleg daemon");
                    }
                    self.connected = true;
                    self.backoff.reset();
                    self.token = stream.resume_token().or(self.token.take());
                    self.stream = Some(stream);
                    return Ok(());
                }
                Err(e) if !transient(&e, self.connected) => return Err(e),
                Err(e) => {
                    let delay = self.backoff.next_delay();
                    tracing::debug!(error = %e, ?delay, "the pleg daemon cannot be reached; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn try_connect(&mut self) -> Result<WatchStream, ClientError> {
        let mut client = Client::connect(&self.socket).await?;
        let from = WatchFrom::live()
            .resume(self.token.clone())
            .initial_state(self.initial_state);
        client.watch_from(&self.filter, self.capacity, &from).await
    }

    /// Where it stands: the last item handed out.
    pub fn resume_token(&self) -> Option<&ResumeToken> {
        self.token.as_ref()
    }

    /// Times it connected again after the first connection.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }
}

/// Whether waiting and connecting again can mend this (`seen`: a daemon
/// answered at the socket before, so one that does not answer as a pleg
/// daemon now is most likely still starting).
fn transient(error: &ClientError, seen: bool) -> bool {
    match error {
        ClientError::NoSocket { .. } | ClientError::Unreachable { .. } => true,
        ClientError::NotPleg { .. } => seen,
        ClientError::Rpc { code, .. } => matches!(
            code,
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Internal
                | tonic::Code::Cancelled
                | tonic::Code::ResourceExhausted
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Aborted
        ),
        _ => false,
    }
}
