//! Container events: the hub that fans pushed events out to every open
//! `GetContainerEvents` stream, and the backlog kept while none is open.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use k8s_cri::v1::ContainerEventResponse;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tonic::Status;

/// Events kept for the next stream while none is open; more are dropped.
pub const EVENT_BACKLOG: usize = 1000;

// --- container events ---

pub(super) type EventItem = Result<ContainerEventResponse, Status>;

/// Open event streams and the backlog kept while none is open.
#[derive(Debug, Default)]
pub(super) struct EventHub {
    pub(super) unimplemented: bool,
    pub(super) streams: Vec<(u64, mpsc::UnboundedSender<EventItem>)>,
    pub(super) backlog: VecDeque<ContainerEventResponse>,
    pub(super) dropped: u64,
    pub(super) streams_opened: u64,
}

impl EventHub {
    pub(super) fn open_streams(&mut self) -> usize {
        self.streams.retain(|(_, tx)| !tx.is_closed());
        self.streams.len()
    }

    pub(super) fn publish(&mut self, event: ContainerEventResponse) {
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

    pub(super) fn end_all(&mut self, status: Option<Status>) {
        for (_, tx) in self.streams.drain(..) {
            if let Some(status) = &status {
                let _ = tx.send(Err(status.clone()));
            }
        }
    }
}

/// Opens a stream that first receives the backlog.
pub(super) fn subscribe(hub: &Arc<Mutex<EventHub>>) -> Result<EventStream, Status> {
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
pub(super) struct EventStream {
    pub(super) rx: mpsc::UnboundedReceiver<EventItem>,
    pub(super) id: u64,
    pub(super) hub: Arc<Mutex<EventHub>>,
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
