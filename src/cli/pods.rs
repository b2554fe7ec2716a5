//! `pleg pods`: the pods and containers pleg knows, from one relist of the
//! runtime or from a running daemon's cache.

use std::sync::Arc;

use anyhow::anyhow;
use pleg::runtime::cri::CriRuntime;
use pleg::server::grpc::{PodListing, pod_listings};
use pleg::{GenericConfig, GenericPleg, RelistDuration};

use super::output::{Format, pods_json, pods_table};
use super::{Failure, Outcome, PodsArgs, RuntimeArgs, exit, init_logging};

/// Prints the table (or JSON) once.
pub async fn run(args: PodsArgs) -> Outcome {
    let source = &args.source;
    init_logging(&source.log_level, super::LogFormat::Text);
    let mut pods: Vec<PodListing> = match source.daemon_socket() {
        Some(socket) => {
            let mut client = source.connect_daemon(socket).await?;
            client
                .list_pods(args.namespace.as_deref())
                .await
                .map_err(|e| Failure::new(exit::DAEMON_UNREACHABLE, e))?
        }
        None => {
            let runtime = connect(&source.runtime, source.wait).await?;
            let pleg = GenericPleg::new(
                runtime,
                GenericConfig {
                    relist: RelistDuration::GENERIC,
                    runtime_request_timeout: source.runtime.runtime_request_timeout,
                },
            )
            .map_err(|e| Failure::new(2, anyhow!(e)))?;
            pleg.relist()
                .await
                .map_err(|e| Failure::new(exit::RUNTIME_UNAVAILABLE, e))?;
            pod_listings(&pleg, args.namespace.as_deref())
        }
    };
    pods.sort_by(|a, b| {
        (&a.status.meta.namespace, &a.status.meta.name)
            .cmp(&(&b.status.meta.namespace, &b.status.meta.name))
    });
    match source.output {
        Format::Text => print!("{}", pods_table(&pods)),
        Format::Json => println!("{}", pods_json(&pods)),
    }
    Ok(())
}

/// Connects to the runtime; with `wait`, retries until it answers.
pub async fn connect(runtime: &RuntimeArgs, wait: bool) -> Result<Arc<CriRuntime>, Failure> {
    let config = runtime.cri_config();
    let connected = if wait {
        CriRuntime::connect_retrying(config).await
    } else {
        CriRuntime::connect(config).await
    };
    connected.map_err(|e| {
        let code = if e.is_retryable() {
            exit::RUNTIME_UNAVAILABLE
        } else {
            2
        };
        Failure::new(
            code,
            anyhow!(
                "{e}{}",
                if e.is_retryable() {
                    " (use --wait to wait for it)"
                } else {
                    ""
                }
            ),
        )
    })
}
