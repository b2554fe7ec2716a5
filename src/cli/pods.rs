//! `pleg pods`: the pods and containers pleg knows, from a running daemon's
//! cache (read in pages) when one answers, else from one relist of the
//! runtime (never its event stream).

use pleg::server::grpc::{PodListing, pod_listings};
use pleg::{Config, Pleg};

use super::output::{Format, pods_json, pods_table};
use super::{Exit, Failure, Outcome, PodsArgs, Source, init_logging};

/// Prints the table (or JSON) once.
pub(crate) async fn run(args: PodsArgs) -> Outcome {
    let source = &args.source;
    let _logging = init_logging(&source.log_level, super::LogFormat::Text);
    let mut pods: Vec<PodListing> = if let Source::Daemon(mut client) =
        source.source("listing pods", true).await?
    {
        client
            .list_pods(args.namespace.as_deref())
            .await
            .map_err(|e| Failure::new(Exit::DaemonUnreachable, e))?
    } else {
        let runtime = source.runtime.connect(source.wait).await?;
        let config = Config::generic().with_request_timeout(source.runtime.runtime_request_timeout);
        let pleg = Pleg::new(runtime, config).map_err(|e| Failure::new(Exit::Usage, e))?;
        pleg.relist()
            .await
            .map_err(|e| Failure::new(Exit::RuntimeUnavailable, e))?;
        pod_listings(&pleg, args.namespace.as_deref())
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
