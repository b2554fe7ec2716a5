//! `pleg-demo --fake`: the relisting generator against the scripted
//! in-memory runtime, with a small workload and every event printed live.

use anyhow::{Context, Result};
use pleg::model::{Container, ContainerState, Pod, PodMeta};
use pleg::runtime::fake::FakeRuntime;
use pleg::{Config, Pleg, PodUid, RelistDuration};

use super::{DemoOptions, print_events, report_health};

fn sandbox(pod: usize, state: ContainerState) -> Container {
    Container::new(format!("sandbox-{pod:02}"), format!("web-{pod}"), state)
}

fn app(pod: usize, attempt: u32, state: ContainerState) -> Container {
    Container::new(format!("app-{pod:02}-{attempt}"), "app", state).with_attempt(attempt)
}

fn web_pod(pod: usize, containers: Vec<Container>, sandbox_state: ContainerState) -> Pod {
    let mut p = Pod::new(
        PodMeta::new(format!("uid-{pod:02}"), format!("web-{pod}"), "demo")
            .with_label("app", "web"),
    )
    .with_sandbox(sandbox(pod, sandbox_state));
    p.containers = containers;
    p
}

/// The demo against the scripted runtime.
pub async fn run(options: DemoOptions) -> Result<()> {
    let runtime = FakeRuntime::new();
    let relist = RelistDuration {
        relist_period: options.relist_period,
        relist_threshold: options.relist_period * 30,
    };
    let pleg = Pleg::new(runtime.clone(), Config::generic().with_relist(relist))
        .context("configuring the generator")?;
    let printer = print_events(pleg.subscribe());
    pleg.start().context("starting the generator")?;
    println!(
        "pleg demo: relisting a scripted runtime every {:?}, {} pods",
        options.relist_period, options.pods
    );

    let step = options.relist_period * 3;
    let pods = options.pods;
    let running = |i| {
        web_pod(
            i,
            vec![app(i, 0, ContainerState::Running)],
            ContainerState::Running,
        )
    };

    // 1. The pods come up.
    runtime.set_pods((0..pods).map(running).collect());
    tokio::time::sleep(step).await;
    report_health(&pleg);

    // 2. A watch condition on pod 0: met once its app container stops running.
    let watched = PodUid::new("uid-00");
    pleg.set_pod_watch_condition(
        &watched,
        "app-stopped",
        pleg::running_container_condition("app", |_| false),
    );

    // 3. Pod 0's container exits with code 3; the kubelet would restart it.
    let mut now: Vec<Pod> = (0..pods).map(running).collect();
    now[0] = web_pod(
        0,
        vec![app(0, 0, ContainerState::Exited).with_exit(3, "Error")],
        ContainerState::Running,
    );
    runtime.set_pods(now.clone());
    tokio::time::sleep(step).await;

    // 4. It comes back as attempt 1; the dead attempt is garbage collected.
    now[0] = web_pod(
        0,
        vec![app(0, 1, ContainerState::Running)],
        ContainerState::Running,
    );
    runtime.set_pods(now.clone());
    tokio::time::sleep(step).await;

    // 5. The last pod is stopped, then removed.
    let last = pods - 1;
    now[last] = web_pod(
        last,
        vec![app(last, 0, ContainerState::Exited).with_exit(0, "Completed")],
        ContainerState::Exited,
    );
    runtime.set_pods(now.clone());
    tokio::time::sleep(step).await;
    now.truncate(last);
    runtime.set_pods(now);
    tokio::time::sleep(step).await;

    report_health(&pleg);
    let counts = pleg.runtime_counts();
    let stats = pleg.stats();
    println!(
        "pleg demo: {} relists, {} events, {} running pods, {} running containers, cache holds {} pods",
        stats.relists,
        stats.events.iter().map(|&(_, _, n)| n).sum::<u64>(),
        counts.running_pods,
        counts.containers(ContainerState::Running),
        pleg.cache().len()
    );
    pleg.stop().await;
    drop(pleg);
    printer.await.context("event printer")?;
    Ok(())
}
