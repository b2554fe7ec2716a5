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
use crate::hub::{Delivery, Filter};
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
        let request =
            watch_request(filter, capacity).map_err(|reason| ClientError::InvalidRequest {
                socket: self.socket.clone(),
                call: "Watch",
                reason,
            })?;
        let events = self
            .inner
            .watch(request)
            .await
            .map_err(|status| self.rpc_error("Watch", &status))?
            .into_inner();
        Ok(WatchStream {
            socket: self.socket.clone(),
            events,
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
        let invalid = |reason| ClientError::InvalidRequest {
            socket: self.socket.clone(),
            call: "Monitor",
            reason,
        };
        let pods = selection_request(filter).map_err(invalid)?;
        let timeout_ms = u32::try_from(timeout.as_millis())
            .map_err(|_| invalid(format!("timeout {timeout:?} is too long")))?;
        let updates = self
            .inner
            .monitor(pb::MonitorRequest {
                pods: Some(pods),
                timeout_ms,
            })
            .await
            .map_err(|status| self.rpc_error("Monitor", &status))?
            .into_inner();
        Ok(MonitorStream {
            socket: self.socket.clone(),
            updates,
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
}

impl WatchStream {
    /// Waits for the next delivery.
    pub async fn next(&mut self) -> Option<Result<Delivery, ClientError>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
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
            Ok(event) => delivery_from_pb(event).map_err(|reason| ClientError::Protocol {
                socket: this.socket.clone(),
                call: "Watch",
                reason,
            }),
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
}

impl MonitorStream {
    /// The next item; `None` once the daemon has sent the report and ended
    /// the stream.
    pub async fn next(&mut self) -> Option<Result<MonitorItem, ClientError>> {
        let item = self.updates.message().await;
        match item {
            Ok(None) => None,
            Ok(Some(update)) => {
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
