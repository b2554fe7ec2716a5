//! What evented mode costs on an idle node: the real `pleg run` over the
//! project-local containerd 1.7 with 300 pods (a sandbox and a `sleep`
//! container each), its own CPU time read from `/proc/<pid>/stat` over two
//! minutes, and the runtime calls it made meanwhile. A measurement, not a
//! check: it asserts nothing about the figures and is ignored by default
//! (it takes about five minutes). Run it with
//! `eval "$(scripts/containerd.sh env)"; cargo build --release --bin pleg;
//! PLEG_BIN=target/release/pleg cargo test --features containerd-tests --test containerd_idle -- --ignored --nocapture`.

#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

mod cri_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use cri_support::{Running, TestPod, driver, endpoint};

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // utime and stime are fields 14 and 15, after the command in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

fn counter(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement of about five minutes; see the module docs"]
async fn measure_the_idle_cost_of_evented_mode_with_300_pods() {
    let driver = driver();
    let mut pods = Vec::new();
    for i in 0..300 {
        let pod = TestPod::run(&driver, &format!("idle{i}")).await;
        pod.start(&driver, "app", 0, vec!["sleep".into(), "3600".into()])
            .await;
        pods.push(pod);
    }
    let dir = pleg_testkit::temp::dir("idle");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let daemon = Running(
        Command::new(
            std::env::var("PLEG_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_pleg").into()),
        )
        .args(["run", "--runtime-endpoint", &endpoint()])
        .args(["--health-addr", &format!("127.0.0.1:{port}")])
        .arg("--grpc-socket")
        .arg(dir.path().join("pleg.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pleg run"),
    );
    let metrics = || async move {
        pleg_testkit::http::get(format!("127.0.0.1:{port}"), "/metrics")
            .await
            .map(|r| r.body)
            .unwrap_or_default()
    };
    pleg_testkit::wait::eventually_async("the stream open", Duration::from_secs(60), || async {
        metrics()
            .await
            .contains("pleg_stream_state{state=\"streaming\"} 1")
            .then_some(())
    })
    .await;
    // One event, so that the stream leaves its first-event watch and the
    // safety-net period (5 min) applies.
    let extra = TestPod::run(&driver, "idle-extra").await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let pid = daemon.0.id();
    let (t0, m0) = (cpu_ticks(pid), metrics().await);
    let window = Duration::from_secs(120);
    tokio::time::sleep(window).await;
    let (t1, m1) = (cpu_ticks(pid), metrics().await);
    let ticks_per_s = 100.0;
    let cpu = (t1 - t0) as f64 / ticks_per_s;
    let share = cpu / window.as_secs_f64() * 100.0;
    let calls = |m: &str| counter(m, "pleg_cri_requests_total{");
    let relists = |m: &str| counter(m, "pleg_relists_total ");
    let probes = |m: &str| counter(m, "pleg_runtime_operations_total{operation=\"Probe\"");
    eprintln!(
        "301 pods, evented, idle for {window:?}: {cpu:.2} s of CPU ({share:.4} % of a core); \
         {} CRI calls ({:.1} a minute), {} relists, {} probes",
        calls(&m1) - calls(&m0),
        (calls(&m1) - calls(&m0)) / window.as_secs_f64() * 60.0,
        relists(&m1) - relists(&m0),
        probes(&m1) - probes(&m0),
    );
    drop(daemon);
    extra.remove(&driver).await;
    for pod in &pods {
        pod.remove(&driver).await;
    }
}
