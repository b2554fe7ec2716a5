//! # pleg: a node-level Pod Lifecycle Event Generator
//!
//! pleg watches a node's container runtime and tells any number of
//! subscribers, promptly and without losing anything, when containers and pod
//! sandboxes start, die or are removed, and when a watch condition on a pod is
//! met. It follows the kubelet's `pkg/kubelet/pleg` and fixes its gaps: many
//! subscribers instead of one, lag that is counted and signalled instead of
//! silently dropped, and unknown runtime values that are counted instead of
//! panicking.
//!
//! The data flows one way: runtime → drivers (relist, event stream) → one
//! writer (the core) → [`cache`] and [`hub`] → subscribers.
//!
//! - [`Pleg`] is the generator. [`Mode::Generic`] relists the runtime (the
//!   kubelet's generic PLEG); [`Mode::Evented`] follows the runtime's CRI
//!   event stream and keeps relisting as a safety net, with fallback and
//!   re-promotion ([`stream`]).
//! - [`runtime::cri::CriRuntime`] speaks CRI v1 to containerd or CRI-O over a
//!   unix socket; for tests, `runtime::fake` (behind the `test-util`
//!   feature) and the fake CRI server of the `pleg-testkit` crate stand in.
//! - [`server`] is what the `pleg run` daemon serves: health probes and
//!   Prometheus metrics over HTTP, the subscription API over gRPC.
//!
//! ## Embedding
//! ```
//! use std::time::Duration;
//! use pleg::{Config, Delivery, EventType, Pleg, RelistDuration};
//! use pleg::model::{Container, ContainerState, Pod, PodMeta};
//! use pleg::runtime::fake::FakeRuntime;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Any `pleg::runtime::Runtime` works; the scripted fake stands in here.
//! let runtime = FakeRuntime::new();
//! let config = Config::generic()
//!     .with_relist(RelistDuration::new(Duration::from_secs(1), Duration::from_secs(180)));
//! let pleg = Pleg::new(runtime.clone(), config).expect("a valid configuration");
//! let mut events = pleg.subscribe();
//! pleg.start().expect("inside a tokio runtime");
//!
//! runtime.set_pods(vec![
//!     Pod::new(PodMeta::new("uid-1", "web", "default"))
//!         .with_sandbox(Container::new("sandbox-1", "web", ContainerState::Running))
//!         .with_container(Container::new("ctr-1", "nginx", ContainerState::Running)),
//! ]);
//!
//! // The sandbox starts first, then its container.
//! let mut started = Vec::new();
//! while started.len() < 2 {
//!     match events.recv().await {
//!         Some(Delivery::Event(e)) if e.kind == EventType::ContainerStarted => {
//!             started.push(e.container.as_ref().map(|c| c.name.clone()))
//!         }
//!         Some(_) => {}
//!         None => break,
//!     }
//! }
//! assert_eq!(started, [Some("web".to_string()), Some("nginx".to_string())]);
//! assert!(pleg.healthy().is_ok());
//! pleg.stop().await;
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backoff;
pub mod cache;
pub mod changes;
pub mod clock;
pub mod condition;
mod core;
pub mod diff;
pub mod duration;
pub mod error;
pub mod event;
pub mod health;
pub mod hub;
pub mod metrics;
pub mod model;
pub mod monitor;
mod naming;
pub mod phase;
mod pleg;
mod relist;
pub mod runtime;
pub mod select;
pub mod server;
pub mod session;
pub mod stream;
mod task;
pub mod terminal;
pub mod unix;
pub mod wait;

pub use crate::core::{FailingPod, RelistSummary};
pub use crate::pleg::{AfterRelist, Config, ConfigError, Pleg, StatsSnapshot};
pub use cache::{CacheEntry, LastEvent, Reader as CacheReader};
pub use condition::{WatchCondition, running_container_condition};
pub use event::{ContainerRef, EventSource, EventType, PodLifecycleEvent};
pub use health::{InvalidRelistDuration, RelistDuration, Unhealthy};
pub use hub::{Delivery, Filter, ResyncReason, SubscribeOptions, Subscription};
pub use model::{ContainerId, PodUid, RuntimeCounts};
pub use runtime::Runtime;
pub use stream::{Mode, StaleReason, StreamState, StreamStats, StreamStatus};
pub use task::NoTokioRuntime;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
