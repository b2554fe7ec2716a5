//! `pleg pods`: the pods and containers pleg knows, from one relist of the
//! runtime or from a running daemon's cache.

use anyhow::anyhow;
use pleg::server::grpc::{PodListing, pod_listings};
use pleg::{GenericConfig, GenericPleg, RelistDuration};

use super::output::{Format, pods_json, pods_table};
use super::{Failure, Outcome, PodsArgs, exit, init_logging};

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
            let runtime = source.runtime.connect(source.wait).await?;
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
