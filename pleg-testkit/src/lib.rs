//! # pleg-testkit: test tooling for pleg, kept out of the shipped library
//!
//! - [`fake_cri`]: a scriptable CRI runtime service on a temporary unix
//!   socket, for wire-level faults (unknown enum values, gRPC errors, slow
//!   answers, cut connections, a vanished socket, container events).
//! - [`driver`]: a crictl-style workload driver with its own CRI client, to
//!   make a real runtime run pods and containers while pleg watches.
//! - [`scale`]: what a `pleg run` daemon costs at N containers (relist
//!   time, split into the runtime's and pleg's own; resident memory).
//! - [`wait`], [`http`], [`temp`]: the helpers pleg's tests share: polling
//!   until something holds, a small HTTP/1.1 client for the daemon's
//!   probes and metrics, temporary directories.
//! - the `pleg-demo` binary: a small workload driven through a runtime,
//!   with pleg watching.
//!
//! It turns on pleg's `test-util` feature, which compiles
//! `pleg::runtime::fake`, the scripted in-memory runtime; pleg's own tests,
//! benchmarks and doctests get it through this crate, a dev-dependency of
//! pleg (as tokio does with tokio-test).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod driver;
pub mod fake_cri;
pub mod http;
pub mod scale;
pub mod temp;
pub mod wait;
