//! The real binaries against the project-local containerd 1.7: `pleg run`
//! as the node daemon, `pleg watch --daemon -o json` and `pleg pods --daemon`
//! attached to it, while the test drives a pod through the test kit's CRI
//! driver.
//! One test only: on containerd 1.7 each event reaches one stream, so a
//! second daemon in the same binary would take some of the events.

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

mod cri_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use cri_support::*;
use serde_json::Value;

/// `GET path` from the daemon's health port, or `None` while nothing answers
/// there.
async fn get(port: u16, path: &str) -> Option<pleg_testkit::http::Reply> {
    pleg_testkit::http::get(format!("127.0.0.1:{port}"), path)
        .await
        .ok()
}

async fn next_line(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a line in time")
        .expect("pleg watch still running");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_watch_and_pods_follow_a_pod_through_its_life_on_containerd() {
    let dir = pleg_testkit::temp::dir("cd-cli");
    let socket = dir.path().join("pleg.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let mut daemon = Running(
        Command::new(env!("CARGO_BIN_EXE_pleg"))
            .args(["run", "--runtime-endpoint", &endpoint()])
            .args(["--health-addr", &format!("127.0.0.1:{port}")])
            .arg("--grpc-socket")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pleg run"),
    );
    // Healthy, with its socket, and its event stream open and caught up (on a
    // quiet containerd 1.7 that takes 500 ms: see DEVELOPERS.md), so that
    // what the test does below comes over the stream.
    let socket_there = socket.as_path();
    pleg_testkit::wait::eventually_async(
        "the daemon healthy, with its socket and its stream open",
        Duration::from_secs(30),
        || async move {
            let healthy = get(port, "/healthz").await.is_some_and(|r| r.status == 200);
            let streaming = get(port, "/metrics")
                .await
                .is_some_and(|r| r.body.contains("pleg_stream_state{state=\"streaming\"} 1"));
            (healthy && streaming && socket_there.exists()).then_some(())
        },
    )
    .await;

    let mut watch = Running(
        Command::new(env!("CARGO_BIN_EXE_pleg"))
            .args([
                "watch",
                "--output",
                "json",
                "--namespace",
                NAMESPACE,
                "--daemon",
            ])
            .arg(&socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("pleg watch"),
    );
    let stdout = watch.0.stdout.take().expect("stdout");
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Let the watcher subscribe before anything happens.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let driver = driver();
    let pod = TestPod::run(&driver, "cli").await;
    let app = pod
        .start(&driver, "app", 0, until_triggered("exit", 3))
        .await;
    let mut seen: Vec<Value> = Vec::new();
    while seen.len() < 2 {
        let e = next_line(&mut lines).await;
        if e["pod_uid"] == pod.uid() {
            seen.push(e);
        }
    }
    assert_eq!(seen[0]["type"], "ContainerStarted");
    assert_eq!(seen[0]["container_id"], pod.sandbox_id.as_str());
    assert_eq!(seen[0]["container_kind"], "sandbox");
    assert_eq!(seen[1]["type"], "ContainerStarted");
    assert_eq!(seen[1]["container_id"], app.as_str());
    assert_eq!(seen[1]["container_name"], "app");
    assert_eq!(seen[1]["pod_name"], pod.spec.name.as_str());

    pod.trigger("exit");
    let died = loop {
        let e = next_line(&mut lines).await;
        if e["pod_uid"] == pod.uid() {
            break e;
        }
    };
    assert_eq!(died["type"], "ContainerDied");
    assert_eq!(died["container_id"], app.as_str());
    assert_eq!(died["exit_code"], 3);
    assert_eq!(died["reason"], "Error");
    assert_eq!(died["source"], "stream", "the daemon runs in evented mode");

    let out = Command::new(env!("CARGO_BIN_EXE_pleg"))
        .args([
            "pods",
            "--output",
            "json",
            "--namespace",
            NAMESPACE,
            "--daemon",
        ])
        .arg(&socket)
        .output()
        .expect("pleg pods");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pods: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let ours = pods
        .as_array()
        .expect("array")
        .iter()
        .find(|p| p["uid"] == pod.uid())
        .expect("our pod is listed");
    let container = &ours["containers"][0];
    assert_eq!(container["state"], "exited");
    assert_eq!(container["exit_code"], 3);
    assert_eq!(container["last_event"], "ContainerDied");

    pod.remove(&driver).await;
    let mut gone = Vec::new();
    while gone.len() < 3 {
        let e = next_line(&mut lines).await;
        if e["pod_uid"] == pod.uid() {
            gone.push((
                e["type"].as_str().unwrap_or_default().to_string(),
                e["container_id"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    gone.sort();
    let mut expected = vec![
        ("ContainerDied".to_string(), pod.sandbox_id.clone()),
        ("ContainerRemoved".to_string(), app.clone()),
        ("ContainerRemoved".to_string(), pod.sandbox_id.clone()),
    ];
    expected.sort();
    assert_eq!(gone, expected);

    // SIGTERM: the daemon exits 0 and removes its socket; the watcher sees
    // its stream end.
    let killed = Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let status = loop {
        if let Some(status) = daemon.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "daemon still running 2 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(status.code(), Some(0));
    assert!(!socket.exists());
}
