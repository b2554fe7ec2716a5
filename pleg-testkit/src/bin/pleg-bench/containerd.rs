//! The bench's own containerd instances, through `scripts/containerd.sh`
//! with `PLEG_CRI_INSTANCE=bench` (so other people's tests on the default
//! instances are never disturbed): bring one up, read its endpoint and pid,
//! SIGKILL it and bring it up again (the restart scenario).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The instance name every call of the script gets.
pub const INSTANCE: &str = "bench";

/// One containerd version's bench instance.
#[derive(Clone, Debug)]
pub struct Containerd {
    /// `1.7`, `2.1`.
    pub version: String,
    script: PathBuf,
    /// `unix:///…/containerd.sock`.
    pub endpoint: String,
    /// The socket's path.
    pub socket: PathBuf,
    /// The test image (`PLEG_TEST_IMAGE`).
    pub image: String,
}

impl Containerd {
    /// Brings the instance of `version` up (a no-op when it is) and reads
    /// its endpoint from `containerd.sh env`.
    pub async fn up(script: &Path, version: &str) -> Result<Containerd> {
        run_script(script, &["up", "--version", version]).await?;
        let env = run_script(script, &["env", "--version", version]).await?;
        let mut endpoint = None;
        let mut image = None;
        for line in env.lines() {
            let Some((name, value)) = line
                .trim()
                .strip_prefix("export ")
                .and_then(|l| l.split_once('='))
            else {
                continue;
            };
            let value = value.trim_matches(|c| c == '\'' || c == '"').to_string();
            if name.ends_with("_ENDPOINT") {
                endpoint = Some(value);
            } else if name == "PLEG_TEST_IMAGE" {
                image = Some(value);
            }
        }
        let endpoint = endpoint.with_context(|| {
            format!(
                "{} env --version {version}: no *_ENDPOINT line in {env:?}",
                script.display()
            )
        })?;
        let socket = PathBuf::from(endpoint.trim_start_matches("unix://"));
        Ok(Containerd {
            version: version.to_string(),
            script: script.to_path_buf(),
            endpoint,
            socket,
            image: image.unwrap_or_else(|| "docker.io/library/busybox:pleg".into()),
        })
    }

    /// containerd's pid, from the instance's `containerd.pid` (beside its
    /// socket; `scripts/containerd.sh` writes it at `up`).
    pub fn pid(&self) -> Option<u32> {
        let file = self.socket.parent()?.join("containerd.pid");
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// SIGKILLs containerd (its shims and containers keep running).
    pub async fn kill(&self) -> Result<()> {
        run_script(&self.script, &["kill", "--version", &self.version])
            .await
            .map(drop)
    }

    /// Starts containerd again after [`kill`](Self::kill).
    pub async fn restart(&self) -> Result<()> {
        run_script(&self.script, &["up", "--version", &self.version])
            .await
            .map(drop)
    }
}

/// Whether the script knows `--version <version>` (its usage names it).
pub async fn script_supports(script: &Path, version: &str) -> bool {
    match tokio::process::Command::new(script)
        .arg("--help")
        .output()
        .await
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout).contains(version),
        Err(_) => false,
    }
}

async fn run_script(script: &Path, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(script)
        .args(args)
        .env("PLEG_CRI_INSTANCE", INSTANCE)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {} {}", script.display(), args.join(" ")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        bail!(
            "PLEG_CRI_INSTANCE={INSTANCE} {} {} failed ({}): {}",
            script.display(),
            args.join(" "),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
