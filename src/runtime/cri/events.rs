//! The runtime's container event stream (`GetContainerEvents`), decoded
//! into our model as it is read.

use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;

use super::convert::event_from_cri;
use super::{CriRuntime, RpcFailure, describe_status};
use crate::runtime::{ContainerEvent, Error, EventStream, Result, RuntimeStats};

/// Opens the event stream. Separate from the `Runtime` impl for readability.
pub(super) async fn open(runtime: &CriRuntime) -> Result<EventStream> {
    runtime.ready().await?;
    // No deadline: containerd (grpc-go) sends the response headers of this
    // stream with its first event, so on a quiet node the call returns only
    // when something happens. The evented generator treats a call that has
    // not failed after a moment as open.
    let answer = runtime
        .rpc("GetContainerEvents", Duration::MAX, |mut c| async move {
            c.get_container_events(cri::GetEventsRequest {}).await
        })
        .await;
    match answer {
        Ok(stream) => Ok(Box::pin(CriEvents {
            inner: stream,
            stats: runtime.stats.clone(),
            endpoint: runtime.endpoint.to_string(),
        })),
        Err(RpcFailure::Status(status)) if is_unimplemented(&status) => Err(Error::Unimplemented {
            call: "GetContainerEvents",
            message: format!(
                "runtime endpoint {}: {}",
                runtime.endpoint,
                describe_status(&status)
            ),
        }),
        Err(failure) => Err(runtime.error("GetContainerEvents", failure)),
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

/// The CRI event stream, decoded into our model as it is read.
struct CriEvents {
    inner: tonic::Streaming<cri::ContainerEventResponse>,
    stats: Arc<RuntimeStats>,
    endpoint: String,
}

impl futures_core::Stream for CriEvents {
    type Item = Result<ContainerEvent>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        loop {
            let next = std::pin::Pin::new(&mut self.inner).poll_next(cx);
            return match next {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Ready(Some(Err(status))) => {
                    let message = format!(
                        "runtime endpoint {}: {}",
                        self.endpoint,
                        describe_status(&status)
                    );
                    Poll::Ready(Some(Err(if is_unimplemented(&status) {
                        Error::Unimplemented {
                            call: "GetContainerEvents",
                            message,
                        }
                    } else {
                        Error::Failed {
                            call: "GetContainerEvents",
                            message,
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
