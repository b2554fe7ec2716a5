//! The accept loop of the health and metrics port, with its limits: a
//! deadline for a request's headers and a cap on open connections.
//!
//! # Why
//! A probe port must keep answering while someone holds connections open
//! without finishing a request (a slow or hostile client, a port scanner,
//! a load balancer's half-open checks): each connection is a file
//! descriptor, and a daemon with a small descriptor limit runs out.
//!
//! # The rules
//! - A request's headers must arrive within [`HttpLimits::header_read_timeout`]
//!   of its first byte (of the connection, for the first request); then the
//!   connection is closed.
//! - At most [`HttpLimits::max_connections`] are open. A new connection at
//!   the cap makes room by closing the oldest idle one, preferring one that
//!   never completed a request's headers (what a flood of half-open
//!   connections is made of), then the oldest idle keep-alive connection.
//!   When every open connection is inside a request, the new one is closed
//!   at once. So a probe's fresh connection, the newest, is the last to be
//!   closed, and is served while a flood holds the cap.
//!
//! # Shutdown
//! When `shutdown` completes, the loop stops accepting and asks every
//! connection to finish its request in flight and close; [`serve_with`]
//! returns when all are closed.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::ServerMetrics;

/// The limits of the HTTP port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// How long a client has to send a request's headers.
    pub header_read_timeout: Duration,
    /// The most connections open at once (at least 1).
    pub max_connections: usize,
}

impl Default for HttpLimits {
    /// 10 s for the headers, 256 connections.
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// How long a client has to send a request's headers, by default.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The most HTTP connections open at once, by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// How long the loop pauses after an accept error that is not the
/// connection's own (out of file descriptors, say), so as not to spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// One open connection, as the cap sees it.
#[derive(Debug)]
struct Tracked {
    /// Closes the connection (without waiting for a request in flight).
    close: CancellationToken,
    /// Inside a request: headers read, response not yet written.
    busy: Arc<AtomicBool>,
    /// Whether a request's headers were ever completed on it.
    served: Arc<AtomicBool>,
}

/// The open connections, oldest first (by accept order).
#[derive(Debug, Default)]
struct Open {
    next_id: AtomicU64,
    connections: Mutex<BTreeMap<u64, Tracked>>,
}

impl Open {
    /// Makes room for one more connection under `cap`: `false` when every
    /// open connection is busy.
    fn make_room(&self, cap: usize, metrics: &ServerMetrics) -> bool {
        let mut connections = self.connections.lock();
        while connections.len() >= cap {
            let idle = |t: &Tracked| !t.busy.load(Ordering::Relaxed);
            let victim = connections
                .iter()
                .find(|(_, t)| idle(t) && !t.served.load(Ordering::Relaxed))
                .or_else(|| connections.iter().find(|(_, t)| idle(t)))
                .map(|(id, _)| *id);
            let Some(id) = victim else {
                return false;
            };
            if let Some(tracked) = connections.remove(&id) {
                tracked.close.cancel();
                metrics.http_connections_shed.inc();
            }
        }
        true
    }

    fn insert(&self, tracked: Tracked) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.connections.lock().insert(id, tracked);
        id
    }

    fn remove(&self, id: u64) {
        self.connections.lock().remove(&id);
    }
}

/// Serves `router` on `listener` under `limits` until `shutdown`, then
/// lets requests in flight finish. See the module docs.
///
/// # Errors
/// None today: accept errors are logged and retried. The `Result` leaves
/// room for a listener that can fail for good.
pub(super) async fn serve_with(
    router: Router,
    listener: TcpListener,
    limits: HttpLimits,
    metrics: ServerMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let cap = limits.max_connections.max(1);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let http = Arc::new(http);
    let open = Arc::new(Open::default());
    let stopping = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let shutdown = std::pin::pin!(shutdown);
    let mut shutdown = shutdown;
    loop {
        let (stream, _peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "health port: accept failed; retrying");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            // Reap finished connections as we go.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        if !open.make_room(cap, &metrics) {
            // Every connection is inside a request: refuse this one.
            metrics.http_connections_shed.inc();
            tracing::debug!(
                "health port: connection cap reached with every connection busy; refused one"
            );
            drop(stream);
            continue;
        }
        let tracked = Tracked {
            close: CancellationToken::new(),
            busy: Arc::default(),
            served: Arc::default(),
        };
        let close = tracked.close.clone();
        let (busy, served) = (tracked.busy.clone(), tracked.served.clone());
        let id = open.insert(tracked);
        metrics.http_connections_open.inc();
        let connection = Connection {
            http: http.clone(),
            router: router.clone(),
            close,
            stopping: stopping.clone(),
            busy,
            served,
        };
        let (open, metrics) = (open.clone(), metrics.clone());
        tasks.spawn(async move {
            connection.serve(stream).await;
            open.remove(id);
            metrics.http_connections_open.dec();
        });
    }
    drop(listener);
    stopping.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// One accepted connection and what it needs.
struct Connection {
    http: Arc<hyper::server::conn::http1::Builder>,
    router: Router,
    close: CancellationToken,
    stopping: CancellationToken,
    busy: Arc<AtomicBool>,
    served: Arc<AtomicBool>,
}

impl Connection {
    async fn serve(self, stream: TcpStream) {
        let Connection {
            http,
            router,
            close,
            stopping,
            busy,
            served,
        } = self;
        let service = hyper::service::service_fn(move |request| {
            // hyper calls the service once a request's headers are in.
            busy.store(true, Ordering::Relaxed);
            served.store(true, Ordering::Relaxed);
            let mut router = router.clone();
            let busy = busy.clone();
            async move {
                let response = tower_service::Service::call(&mut router, request).await;
                busy.store(false, Ordering::Relaxed);
                response
            }
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let mut connection = std::pin::pin!(connection);
        let finished = tokio::select! {
            finished = connection.as_mut() => finished,
            // Closed to make room: dropped at once.
            () = close.cancelled() => return,
            () = stopping.cancelled() => {
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    finished = connection.as_mut() => finished,
                    () = close.cancelled() => return,
                }
            }
        };
        if let Err(e) = finished {
            // Timeouts and clients that went away are theirs, not ours.
            tracing::debug!(error = %e, "health port: connection ended with an error");
        }
    }
}

/// Whether an accept error is about the one connection (it went away
/// before we took it) rather than the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracked(busy: bool, served: bool) -> Tracked {
        Tracked {
            close: CancellationToken::new(),
            busy: Arc::new(AtomicBool::new(busy)),
            served: Arc::new(AtomicBool::new(served)),
        }
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_without_headers_goes_first_then_the_oldest_idle() {
        let metrics = ServerMetrics::default();
        let open = Open::default();
        let busy = open.insert(tracked(true, true));
        let keep_alive = open.insert(tracked(false, true));
        let half_open = open.insert(tracked(false, false));
        let newer_half_open = open.insert(tracked(false, false));
        let closed = |id: u64| !open.connections.lock().contains_key(&id);

        assert!(open.make_room(5, &metrics), "room under the cap");
        assert!(!closed(half_open));

        assert!(open.make_room(4, &metrics));
        assert!(closed(half_open), "the oldest that never sent its headers");
        assert!(!closed(newer_half_open) && !closed(keep_alive) && !closed(busy));

        assert!(open.make_room(3, &metrics));
        assert!(closed(newer_half_open));
        assert!(open.make_room(2, &metrics));
        assert!(closed(keep_alive), "then the oldest idle keep-alive");
        assert!(!closed(busy));

        assert!(
            !open.make_room(1, &metrics),
            "a request in flight is never cut"
        );
        assert!(!closed(busy));
        assert_eq!(metrics.http_connections_shed.get(), 3);
    }
}
