//! The deployment examples in `deploy/` stay valid: the DaemonSet parses as
//! YAML with the shape Kubernetes expects, the systemd unit parses as a unit
//! file, and the flags both give `pleg run` are accepted by the real binary.

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

use std::path::Path;
use std::process::Command;

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Runs `pleg <args> --check-config`; panics with its output unless it exits 0.
fn check_config(args: &[String]) {
    let output = Command::new(env!("CARGO_BIN_EXE_pleg"))
        .args(args)
        .arg("--check-config")
        .env_clear()
        .output()
        .expect("run pleg");
    assert!(
        output.status.success(),
        "pleg {args:?} --check-config: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("--{name}=")))
}

#[test]
fn daemonset_is_valid_yaml_with_probes_on_the_health_port_and_the_runtime_socket_mounted() {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/daemonset.yaml")).expect("YAML");
    assert_eq!(doc["apiVersion"].as_str(), Some("apps/v1"));
    assert_eq!(doc["kind"].as_str(), Some("DaemonSet"));
    let spec = &doc["spec"]["template"]["spec"];
    assert_eq!(
        doc["spec"]["selector"]["matchLabels"], doc["spec"]["template"]["metadata"]["labels"],
        "the selector matches the pod labels"
    );
    assert_eq!(spec["hostNetwork"].as_bool(), Some(true));
    let container = &spec["containers"][0];
    let args: Vec<String> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("run"));
    check_config(&args);

    let health = flag(&args, "health-addr").expect("--health-addr");
    let port: u64 = health
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("port");
    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(get["port"].as_u64(), Some(port), "{probe} port");
        assert_eq!(get["host"].as_str(), Some("127.0.0.1"), "{probe} host");
    }

    let endpoint = flag(&args, "runtime-endpoint").expect("--runtime-endpoint");
    let socket = endpoint.trim_start_matches("unix://");
    let mounts = container["volumeMounts"].as_sequence().expect("mounts");
    let mount = mounts
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(socket))
        .expect("the runtime socket is mounted where --runtime-endpoint points");
    let volume = spec["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mount's volume");
    assert_eq!(volume["hostPath"]["path"].as_str(), Some(socket));
    assert_eq!(volume["hostPath"]["type"].as_str(), Some("Socket"));

    let grpc = flag(&args, "grpc-socket").expect("--grpc-socket");
    let dir = Path::new(grpc)
        .parent()
        .and_then(|d| d.to_str())
        .expect("socket dir");
    assert!(
        mounts.iter().any(|m| m["mountPath"].as_str() == Some(dir)),
        "the gRPC socket's directory is shared with the node"
    );
}

#[test]
fn daemonset_container_is_hardened_and_says_how_its_image_is_built() {
    let text = read("deploy/daemonset.yaml");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    let spec = &doc["spec"]["template"]["spec"];
    let container = &spec["containers"][0];

    // What tests/containerd_pod.rs carries out and checks in the process.
    let context = &container["securityContext"];
    assert_eq!(context["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(context["allowPrivilegeEscalation"].as_bool(), Some(false));
    let dropped: Vec<&str> = context["capabilities"]["drop"]
        .as_sequence()
        .expect("capabilities.drop")
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert_eq!(dropped, ["ALL"]);
    assert!(
        context["capabilities"]["add"].is_null(),
        "no capability added"
    );
    assert!(
        container["command"].is_null(),
        "the image's entrypoint (/usr/bin/pleg) runs"
    );
    // The pod test reads the flags in this shape.
    for arg in container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .skip(1)
    {
        let arg = arg.as_str().expect("string arg");
        assert!(
            arg.starts_with("--") && arg.contains('='),
            "{arg}: args are --flag=value"
        );
    }
    // The pod test stops pleg with this grace and expects a clean exit (0)
    // before it: pleg itself gives its servers 1.5 s.
    let grace = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!((2..=30).contains(&grace), "{grace} s");
    assert_eq!(container["imagePullPolicy"].as_str(), Some("IfNotPresent"));

    // The image's recipe is named, and exists.
    assert!(
        text.contains("scripts/pleg-image.sh"),
        "the manifest says how to build the image"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pleg-image.sh");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&script)
            .expect("scripts/pleg-image.sh")
            .permissions(),
    );
    assert!(mode & 0o111 != 0, "scripts/pleg-image.sh is executable");
}

#[test]
fn systemd_unit_parses_and_its_command_line_is_accepted() {
    let text = read("deploy/pleg.service");
    let mut section = String::new();
    let mut sections = Vec::new();
    let mut exec_start = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            sections.push(section.clone());
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not key=value: {line}", n + 1));
        assert!(!section.is_empty(), "line {}: outside a section", n + 1);
        assert!(
            key.chars().all(|c| c.is_ascii_alphanumeric()),
            "line {}: bad key {key:?}",
            n + 1
        );
        if section == "Service" && key == "ExecStart" {
            exec_start = Some(value.to_string());
        }
    }
    assert_eq!(sections, ["Unit", "Service", "Install"]);
    let exec = exec_start.expect("ExecStart");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/pleg"));
    let args: Vec<String> = words.map(String::from).collect();
    assert_eq!(args.first().map(String::as_str), Some("run"));
    check_config(&args);
}
