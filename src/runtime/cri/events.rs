//! The runtime's container event stream (`GetContainerEvents`), decoded
//! into our model as it is read.
//!
//! # A pending open counts as open
//! containerd (grpc-go) sends the stream's response headers only with its
//! first event, so on a quiet node the call that opens the stream does not
//! return until something happens. A refusal (`Unimplemented`, a missing
//! socket) comes at once. So [`open`] waits [`OPEN_GRACE`] for the call: a
//! call not refused by then is handed out as an open stream that first
//! finishes the call, then yields its events (or the call's late failure).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use k8s_cri::v1 as cri;

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use super::convert::event_from_cri;
use super::{CriRuntime, RpcFailure, RuntimeEndpoint, describe_status, rpc, rpc_error};
use crate::runtime::{Call, ContainerEvent, CriMethod, Error, EventStream, Result, RuntimeStats};

/// How long a call to open the stream may stay unanswered before the stream
/// counts as open.
pub(super) const OPEN_GRACE: Duration = Duration::from_millis(500);

type Opening = Pin<Box<dyn Future<Output = Result<CriEvents>> + Send>>;

/// Opens the event stream. Separate from the `Runtime` impl for readability.
pub(super) async fn open(runtime: &CriRuntime) -> Result<EventStream> {
    runtime.ready().await?;
    let mut opening: Opening = Box::pin(call(
        runtime.client.clone(),
        runtime.stats.clone(),
        runtime.endpoint.clone(),
    ));
    match tokio::time::timeout(OPEN_GRACE, &mut opening).await {
        Ok(Ok(events)) => Ok(Box::pin(events)),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(Box::pin(PendingOpen::Opening(opening))),
    }
}

/// The `GetContainerEvents` call itself, owning what it needs (it may
/// outlive the grace period). No deadline: on a quiet node it returns only
/// when something happens.
async fn call(
    client: RuntimeServiceClient<Channel>,
    stats: Arc<RuntimeStats>,
    endpoint: RuntimeEndpoint,
) -> Result<CriEvents> {
    let answer = rpc(
        &client,
        &stats,
        CriMethod::GetContainerEvents,
        Duration::MAX,
        |mut c| async move { c.get_container_events(cri::GetEventsRequest {}).await },
    )
    .await;
    match answer {
        Ok(stream) => Ok(CriEvents {
            inner: stream,
            stats,
            endpoint: endpoint.to_string(),
        }),
        Err(RpcFailure::Status(status)) if is_unimplemented(&status) => Err(Error::Unimplemented {
            call: Call::Cri(CriMethod::GetContainerEvents),
            message: format!("runtime endpoint {endpoint}: {}", describe_status(&status)),
        }),
        Err(failure) => Err(rpc_error(&endpoint, CriMethod::GetContainerEvents, failure)),
    }
}

/// containerd 1.6 answers `Unimplemented`; some 1.6 patch releases answer
/// `Unknown` with "not implemented".
fn is_unimplemented(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::Unimplemented => true,
        tonic::Code::Unknown => {
            let message = status.message().to_ascii_lowercase();
            message.contains("not implemented") || message.contains("unimplemented")
        }
        _ => false,
    }
}

/// A stream whose opening call was still pending after the grace period.
enum PendingOpen {
    /// The call is pending: the runtime holds the stream open until its
    /// first event.
    Opening(Opening),
    /// Events flow (boxed: the pending call is only a pointer).
    Open(Box<CriEvents>),
    /// The call failed late, and said so.
    Done,
}

impl futures_core::Stream for PendingOpen {
    type Item = Result<ContainerEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match &mut *self {
                PendingOpen::Opening(opening) => match opening.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(events)) => *self = PendingOpen::Open(Box::new(events)),
                    Poll::Ready(Err(e)) => {
                        *self = PendingOpen::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                PendingOpen::Open(events) => return Pin::new(&mut **events).poll_next(cx),
                PendingOpen::Done => return Poll::Ready(None),
            }
        }
    }
}

/// The CRI event stream, decoded into our model as it is read.
struct CriEvents {
    inner: tonic::Streaming<cri::ContainerEventResponse>,
    stats: Arc<RuntimeStats>,
    endpoint: String,
}

impl futures_core::Stream for CriEvents {
    type Item = Result<ContainerEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let next = Pin::new(&mut self.inner).poll_next(cx);
            return match next {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Ready(Some(Err(status))) => {
                    let message = format!(
                        "runtime endpoint {}: {}",
                        self.endpoint,
                        describe_status(&status)
                    );
                    let call = Call::Cri(CriMethod::GetContainerEvents);
                    Poll::Ready(Some(Err(if is_unimplemented(&status) {
                        Error::Unimplemented { call, message }
                    } else {
                        Error::Failed {
                            call,
                            code: status.code(),
                            message,
                            source: Some(Arc::new(status)),
                        }
                    })))
                }
                Poll::Ready(Some(Ok(event))) => match event_from_cri(&self.stats, event) {
                    Some(event) => Poll::Ready(Some(Ok(event))),
                    None => continue,
                },
            };
        }
    }
}
