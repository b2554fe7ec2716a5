//! Serving on the unix socket: binding it, the accept loop, and the registry
//! of open connections that lets the handle cut them all at once (see
//! [Connections](super#connections)). The socket's identity and the stream
//! of accepted connections are pleg's own ([`pleg::unix`]); wrapping each
//! connection so that it can be cut is the fake's.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures_core::Stream;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use parking_lot::Mutex;
use pleg::unix::SocketIdentity;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tonic::transport::server::{Connected, UdsConnectInfo};

use super::service::Shared;

/// The accept loop and the socket file it serves on.
#[derive(Debug)]
pub(super) struct Serving {
    pub(super) task: JoinHandle<()>,
    /// The file bound, so that we never remove a socket another server has
    /// bound at the same path since.
    pub(super) socket: SocketIdentity,
}

// --- serving and connections ---

/// Binds the socket and spawns the accept loop.
pub(super) fn serve_on(shared: &Arc<Shared>, path: &Path) -> io::Result<Serving> {
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
    {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    let socket = SocketIdentity::of(path)?;
    shared.connections.accept_new();
    let incoming = Incoming {
        accepted: pleg::unix::Incoming::new(listener),
        connections: Arc::clone(&shared.connections),
    };
    let service = RuntimeServiceServer::from_arc(Arc::clone(shared));
    let shared_for_layer = Arc::clone(shared);
    let task = tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .layer(GarbleLayer {
                shared: Arc::clone(&shared_for_layer),
            })
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "fake CRI server stopped");
        }
    });
    Ok(Serving { task, socket })
}

// --- garbled answers ---

/// Spoils the answers of the methods set to be garbled
/// ([`FakeCriServer::garble`](super::FakeCriServer::garble)): the byte
/// after each answer's 5-byte gRPC message prefix, the first field's tag,
/// gets wire type 7. tonic writes a unary answer's prefix and message as one
/// data frame.
#[derive(Clone, Debug)]
struct GarbleLayer {
    shared: Arc<Shared>,
}

impl<S> tower_layer::Layer<S> for GarbleLayer {
    type Service = Garble<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Garble {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

#[derive(Clone, Debug)]
struct Garble<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B> tower_service::Service<http::Request<B>> for Garble<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let garbled = super::method::canonical(request.uri().path()).is_some_and(|method| {
            self.shared
                .faults
                .lock()
                .get(method)
                .is_some_and(|faults| faults.garbled)
        });
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            if !garbled {
                return Ok(response);
            }
            Ok(response.map(|body| {
                let mut first = true;
                tonic::body::Body::new(http_body_util::BodyExt::map_frame(body, move |frame| {
                    frame.map_data(|data| {
                        if !std::mem::take(&mut first) || data.len() <= 5 {
                            return data;
                        }
                        let mut spoiled = data.to_vec();
                        spoiled[5] |= 0x07;
                        bytes::Bytes::from(spoiled)
                    })
                }))
            }))
        })
    }
}

pub(super) fn remove_socket_file(path: &Path, socket: SocketIdentity) {
    // A socket that cannot be removed is left behind; the test goes on.
    let _ = socket.remove_if_unchanged(path);
}

/// The open connections, each as a duplicate of its socket's descriptor so
/// that it can be shut down from outside the task serving it.
#[derive(Debug, Default)]
pub(super) struct Connections {
    pub(super) inner: Mutex<ConnectionsInner>,
    pub(super) accepted: AtomicU64,
}

#[derive(Debug, Default)]
pub(super) struct ConnectionsInner {
    pub(super) open: HashMap<u64, std::os::unix::net::UnixStream>,
    pub(super) next_id: u64,
    pub(super) refusing: bool,
}

impl Connections {
    pub(super) fn register(self: &Arc<Self>, stream: UnixStream) -> io::Result<Connection> {
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

    pub(super) fn open(&self) -> usize {
        self.inner.lock().open.len()
    }

    /// Shuts every open connection down; returns how many.
    pub(super) fn cut_all(&self) -> usize {
        let cut: Vec<_> = self.inner.lock().open.drain().map(|(_, s)| s).collect();
        for socket in &cut {
            // Fails only if the peer is already gone, which is the goal.
            let _ = socket.shutdown(Shutdown::Both);
        }
        cut.len()
    }

    pub(super) fn refuse_new(&self) {
        self.inner.lock().refusing = true;
    }

    pub(super) fn accept_new(&self) {
        self.inner.lock().refusing = false;
    }
}

/// Accepted connections, registered as they come.
pub(super) struct Incoming {
    pub(super) accepted: pleg::unix::Incoming,
    pub(super) connections: Arc<Connections>,
}

impl Stream for Incoming {
    type Item = io::Result<Connection>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        Pin::new(&mut this.accepted)
            .poll_next(cx)
            .map(|accepted| accepted.map(|stream| this.connections.register(stream?)))
    }
}

/// One accepted connection; leaves the registry when hyper drops it.
#[derive(Debug)]
pub(super) struct Connection {
    pub(super) stream: UnixStream,
    pub(super) id: u64,
    pub(super) connections: Arc<Connections>,
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
