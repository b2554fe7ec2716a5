//! The bench's subscriber: a gRPC `Watch` of the bench's pods on the
//! daemon, every event stamped with the wall-clock time the bench holds it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use parking_lot::Mutex;
use pleg::server::grpc::{Client, WatchFrom};
use pleg::{Delivery, EventSource, EventType, Filter};
use tokio::task::JoinHandle;

use crate::workload::RUN_LABEL;

/// One event as held.
#[derive(Clone, Debug)]
pub struct Seen {
    pub id: String,
    pub kind: EventType,
    pub exit_code: Option<i32>,
    pub source: EventSource,
    /// The wire's `runtime_time_unix_nanos`: for stream events, the CRI
    /// event's `created_at`.
    pub runtime_time: Option<SystemTime>,
    pub held: SystemTime,
}

/// What the subscriber saw.
#[derive(Debug, Default)]
pub struct Observed {
    pub events: Vec<Seen>,
    /// `Resync`s, with their reasons.
    pub resyncs: Vec<String>,
    pub error: Option<String>,
}

/// A running subscription.
pub struct Subscriber {
    pub seen: Arc<Mutex<Observed>>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Connects to the daemon at `socket`, asks for the initial state of
    /// the run's pods, and returns once it is complete (`Synced`): what
    /// follows is live.
    pub async fn start(socket: &Path, run_id: &str) -> Result<Subscriber> {
        let mut client = Client::connect(socket)
            .await
            .with_context(|| format!("connecting to pleg at {}", socket.display()))?;
        let filter = Filter::all().with_label(RUN_LABEL, run_id);
        let mut stream = client
            .watch_from(&filter, 16_384, &WatchFrom::live().initial_state(true))
            .await
            .context("Watch on the daemon")?;
        let synced = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match stream.next().await {
                    Some(Ok(Delivery::Synced(_))) => return Ok(()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(anyhow::Error::new(e)),
                    None => bail!("the daemon ended the Watch before its initial state"),
                }
            }
        })
        .await
        .context("no Synced on the Watch within 30 s")?;
        synced?;
        let seen = Arc::new(Mutex::new(Observed::default()));
        let out = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let item = stream.next().await;
                let held = SystemTime::now();
                match item {
                    Some(Ok(Delivery::Event(e))) => {
                        let Some(c) = &e.container else { continue };
                        out.lock().events.push(Seen {
                            id: c.id.as_str().to_string(),
                            kind: e.kind,
                            exit_code: e.exit_code,
                            source: e.source,
                            runtime_time: e.runtime_time,
                            held,
                        });
                    }
                    Some(Ok(Delivery::Resync { missed, reason, .. })) => {
                        out.lock().resyncs.push(format!("{reason:?} ({missed})"));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        out.lock().error = Some(e.to_string());
                        break;
                    }
                    None => break,
                }
            }
        });
        Ok(Subscriber { seen, task })
    }

    /// Stops reading and returns what it saw.
    pub fn finish(self) -> Observed {
        self.task.abort();
        std::mem::take(&mut *self.seen.lock())
    }
}
