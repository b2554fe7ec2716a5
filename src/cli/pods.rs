//! `pleg pods`: the pods and containers pleg knows, from a running daemon's
//! cache (read in pages) when one answers, else from one relist of the
//! runtime (never its event stream).

use pleg::phase::CrashLoops;
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
        let mut pods = pod_listings(&pleg, args.namespace.as_deref());
        // One listing follows no deaths: a crash loop shows only in the
        // earlier attempts the runtime still keeps.
        let mut loops = CrashLoops::default();
        for p in &pods {
            loops.seed(&p.status);
        }
        let now = std::time::SystemTime::now();
        for p in &mut pods {
            p.health = Some(loops.health(&p.status, now));
        }
        pods
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
