//! The lifecycle of a background task: started at most once at a time,
//! stopped by cancellation and awaited, cancelled when its owner goes away.
//! The relist loop and the stream driver both run in one.

use std::future::Future;

use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Running {
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// A slot for one background task.
pub(crate) struct TaskSlot {
    /// For log lines: "relist loop", "event stream driver".
    name: &'static str,
    running: Mutex<Option<Running>>,
}

/// `start` was called outside a tokio runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("pleg start: no tokio runtime; call start() from within one")]
pub struct NoTokioRuntime;

impl TaskSlot {
    pub(crate) const fn new(name: &'static str) -> Self {
        TaskSlot {
            name,
            running: parking_lot::const_mutex(None),
        }
    }

    /// Spawns `task` on the current tokio runtime unless one is running
    /// already. The task gets a token that is cancelled by [`stop`](Self::stop)
    /// or when the slot is dropped.
    pub(crate) fn start<F, Fut>(&self, task: F) -> Result<(), NoTokioRuntime>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NoTokioRuntime)?;
        let mut running = self.running.lock();
        if running.as_ref().is_some_and(|r| !r.handle.is_finished()) {
            return Ok(());
        }
        let cancel = CancellationToken::new();
        let handle = runtime.spawn(task(cancel.clone()));
        *running = Some(Running { cancel, handle });
        Ok(())
    }

    /// Cancels the task and waits for it to end. A panic in it is logged.
    pub(crate) async fn stop(&self) {
        let running = self.running.lock().take();
        if let Some(Running { cancel, handle }) = running {
            cancel.cancel();
            if let Err(e) = handle.await
                && e.is_panic()
            {
                tracing::error!("{} panicked: {e}", self.name);
            }
        }
    }

    /// Whether the task runs.
    pub(crate) fn is_running(&self) -> bool {
        self.running
            .lock()
            .as_ref()
            .is_some_and(|r| !r.handle.is_finished())
    }
}

impl Drop for TaskSlot {
    fn drop(&mut self) {
        if let Some(running) = self.running.get_mut().take() {
            running.cancel.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_runs_once_stops_when_asked_and_is_cancelled_with_its_slot() {
        let slot = TaskSlot::new("test task");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..2 {
            let tx = tx.clone();
            slot.start(move |cancel| async move {
                let _ = tx.send(());
                cancel.cancelled().await;
            })
            .expect("inside a runtime");
        }
        assert!(rx.recv().await.is_some());
        assert!(slot.is_running());
        slot.stop().await;
        assert!(!slot.is_running());
        assert!(rx.try_recv().is_err(), "started once");

        let dropped = TaskSlot::new("dropped task");
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        dropped
            .start(move |cancel| async move {
                cancel.cancelled().await;
                let _ = done_tx.send(());
            })
            .expect("inside a runtime");
        drop(dropped);
        assert!(done_rx.await.is_ok(), "cancelled when the slot went away");
    }

    #[test]
    fn start_outside_a_runtime_is_refused() {
        let slot = TaskSlot::new("test task");
        assert_eq!(slot.start(|_| async {}), Err(NoTokioRuntime));
    }
}
